import dataclasses

import pandas as pd
import pytest
import torch

from caft_tl.core.subspace import random_subspace
from caft_tl.diffing.diffs import mean_activations
from caft_tl.interventions import checks
from caft_tl.interventions.intervention import Intervention
from caft_tl.interventions.modes import MODES

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture
def template(tiny_model):
    sub = random_subspace(tiny_model.cfg.d_model, 2, HOOK, seed=0)
    sub = sub.with_mean(torch.randn(tiny_model.cfg.d_model))
    return Intervention("zero", [sub])


def test_mode_grid_labels_and_params(template):
    grid = checks.mode_grid(template, ["zero", "mean", "steer_mean", "add"], {"k": [-3, 1], "alpha": [4.0]})
    assert list(grid) == ["zero", "mean", "steer_mean k=-3", "steer_mean k=1", "add alpha=4"]
    assert [iv.mode for iv in grid.values()] == ["zero", "mean", "steer_mean", "steer_mean", "add"]
    assert [iv.scale for iv in grid.values()] == [1.0, 1.0, -3.0, 1.0, 4.0]
    assert grid["steer_mean k=-3"].scale == -3.0 and grid["steer_mean k=-3"].param == "k=-3"
    assert grid["zero"].param == "" and template.mode == "zero"  # the template is not mutated
    with pytest.raises(ValueError, match=r"mode 'add' takes alpha values"):
        checks.mode_grid(template, ["add"], {"k": [1]})


def test_mode_grid_covers_every_mode_at_its_scale_values(template):
    values = {"k": [-5, 2.5], "alpha": [-4.0]}
    grid = checks.mode_grid(template, list(MODES), values)
    for name, spec in MODES.items():
        expected = [float(v) for v in values[spec.scale]] if spec.scale else [1.0]
        assert [iv.scale for iv in grid.values() if iv.mode == name] == expected


def test_behaviour_under_and_verdicts(tiny_model, world, template):
    check = checks.behaviour_under(tiny_model, world, {"zero": template})
    assert set(check["condition"]) == {"none", "zero"}
    assert len(check) == 2 * sum(len(world.eval_prompts(s)) for s in world.eval_splits)
    assert check["rate"].between(0, 1).all()
    summary = checks.summarise_check(check)
    named = dataclasses.replace(template, name="pca")
    rows = checks.result_rows(
        summary, {"zero": named}, world.name, "persona_em-s0-test", lambda r: world.metric(r.split)
    )
    assert {(r["method"], r["directions"], r["param"], r["trained"]) for r in rows} == {
        ("zero", "pca", "", False)
    } and len(rows) == 3


def test_steering_verdict_reads_intervals(world):
    summary = pd.DataFrame(
        [
            {"condition": "none", "split": "chat", "mean": 0.2, "low": 0.18, "high": 0.22},
            {"condition": "up", "split": "chat", "mean": 0.5, "low": 0.4, "high": 0.6},
            {"condition": "down", "split": "chat", "mean": 0.05, "low": 0.01, "high": 0.1},
            {"condition": "flat", "split": "chat", "mean": 0.21, "low": 0.1, "high": 0.3},
        ]
    )
    v = checks.steering_verdict(summary, world).set_index("condition")["verdict"]
    assert v["up"] == "toward misalignment_rate"
    assert v["down"] == "away from misalignment_rate"
    assert v["flat"] == "no measurable change in misalignment_rate"


def test_latent_check_sees_the_ablation(tiny_model, world, template):
    probe = template.subspaces[0].select([0])  # a probe reading the ablated direction itself
    data = world.finetune_dataset(16)
    latent = checks.latent_check(tiny_model, data, {"zero": template}, [probe], positions="all")
    means = latent.groupby("condition")["activation"].apply(lambda a: a.abs().max())
    assert means["zero"] < 1e-5 < means["none"]
    with pytest.raises(ValueError, match="rank 2"):
        checks.latent_check(tiny_model, data, {}, [template.subspaces[0]])


def test_mean_activations_streams_the_mean(tiny_model, world):
    data = world.finetune_dataset(40)
    mu = mean_activations(tiny_model, data, [HOOK], positions="response", batch_size=7)[HOOK]
    _, cache = tiny_model.run_with_cache(data.tokens, names_filter=[HOOK])
    torch.testing.assert_close(mu, cache[HOOK][data.position_mask("response")].mean(0), atol=1e-5, rtol=0)
