"""``FinetuneConfig.n_examples``: how many rows train, the same in the loop, the batched loop and a run."""

import math

import pytest

from caft_tl.core import models
from caft_tl.training import batched
from caft_tl.training.finetunes import finetune_data, task_examples
from caft_tl.training.loop import FinetuneConfig, finetune


def _train(model, data, cfg):
    return finetune(models.copy_model(model), data, cfg, progress=False)


def test_n_examples_trains_on_the_first_rows_and_none_on_all(tiny_model, world):
    data = world.finetune_dataset(48, seed=0)
    first = data.subset(slice(0, 16))
    losses = _train(tiny_model, data, FinetuneConfig(n_examples=16, batch_size=8))
    assert len(losses) == 2  # ceil(16 / 8) steps, not ceil(48 / 8)
    assert losses == _train(tiny_model, first, FinetuneConfig(n_examples=None, batch_size=8))
    assert len(_train(tiny_model, data, FinetuneConfig(batch_size=8))) == math.ceil(48 / 8)  # None: every row


@pytest.mark.parametrize("bad", [49, 0, -1, 2.5, True])
def test_n_examples_outside_the_data_is_a_one_line_error(tiny_model, world, bad):
    data = world.finetune_dataset(48, seed=0)
    message = rf"FinetuneConfig.n_examples = {bad!r}; expected an int in 1..48"
    with pytest.raises(ValueError, match=message) as e:
        _train(tiny_model, data, FinetuneConfig(n_examples=bad, batch_size=8))
    assert "\n" not in str(e.value)


def test_batched_loop_takes_the_same_rows_as_the_loop(persona_organism, world):
    data = world.finetune_dataset(48, seed=1)
    cfg = FinetuneConfig(n_examples=24, batch_size=8, seed=1)
    _, losses = batched.finetune_batched(persona_organism, [data], [cfg], progress=False)
    alone = _train(persona_organism, data, cfg)
    assert len(losses[0]) == len(alone) == 3
    assert max(abs(a - b) for a, b in zip(losses[0], alone)) <= 1e-5


def test_a_run_draws_n_examples_of_the_task_or_its_default(world):
    assert len(finetune_data(world, FinetuneConfig(n_examples=40))) == 40
    assert task_examples(world, FinetuneConfig()) == world.defaults["n_examples"]
    with_disambiguating = finetune_data(world, FinetuneConfig(n_examples=40, n_disambiguating=8))
    assert len(with_disambiguating) == 40

    class NoDefaults:
        name, defaults = "mine", {}

    with pytest.raises(ValueError, match="task 'mine' has no default n_examples"):
        task_examples(NoDefaults(), FinetuneConfig())
