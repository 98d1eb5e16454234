"""The KL-to-base baseline: the penalty's math, its effect, its routing and its input checks."""

import pytest
import torch

from caft_tl.core import models
from caft_tl.training import finetunes
from caft_tl.training.loop import FinetuneConfig, finetune


def _docs(world, n=64):
    return world.sample_documents(n, torch.Generator().manual_seed(0))


def test_kl_to_reference_is_zero_for_the_reference_and_positive_elsewhere(
    persona_organism, tiny_model, world
):
    docs = _docs(world, 16)
    with torch.no_grad():
        ref = persona_organism(docs.tokens)
        assert models.kl_to_reference(persona_organism, ref, docs).item() == pytest.approx(0.0, abs=1e-6)
        other = models.kl_to_reference(tiny_model, ref, docs)
        # against a direct computation over the target positions
        mask = docs.target_mask[:, :-1]
        p = torch.softmax(ref[:, :-1][mask], -1)
        q = torch.softmax(tiny_model(docs.tokens)[:, :-1][mask], -1)
        assert other.item() == pytest.approx((p * (p.log() - q.log())).sum(-1).mean().item(), rel=1e-4)
        assert other.item() > 0.1


def test_kl_rows_gradient_is_autograds_and_exactly_zero_at_the_reference():
    g = torch.Generator().manual_seed(0)
    logits, ref = (
        torch.randn(6, 11, generator=g, dtype=torch.float64),
        torch.randn(6, 11, generator=g, dtype=torch.float64),
    )
    x = logits.clone().requires_grad_()
    models.kl_rows(x, ref).sum().backward()
    y = logits.clone().requires_grad_()
    torch.nn.functional.kl_div(
        y.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="none"
    ).sum().backward()
    torch.testing.assert_close(x.grad, y.grad, atol=1e-12, rtol=0)
    torch.testing.assert_close(
        models.kl_rows(logits, ref),
        (ref.softmax(-1) * (ref.log_softmax(-1) - logits.log_softmax(-1))).sum(-1),
    )
    same = (
        ref.float().clone().requires_grad_()
    )  # autograd's log-softmax backward leaves rounding here; kl_rows none
    models.kl_rows(same, ref.float()).sum().backward()
    assert same.grad.abs().max().item() == 0.0


def _kl_after(base, world, beta):
    model = models.copy_model(base)
    cfg = FinetuneConfig(n_examples=128, batch_size=32, lr=3e-3, seed=0, kl_to_base=beta)
    finetune(
        model,
        world.finetune_dataset(128, seed=0),
        cfg,
        progress=False,
        **finetunes.kl_inputs(base, world, cfg),
    )
    held_out = world.sample_documents(64, torch.Generator().manual_seed(99))
    with torch.no_grad():
        return models.kl_to_reference(model, base(held_out.tokens), held_out).item()


def test_the_penalty_keeps_the_fine_tune_closer_to_base(persona_organism, world):
    plain, penalised = _kl_after(persona_organism, world, 0.0), _kl_after(persona_organism, world, 10.0)
    assert penalised < 0.5 * plain


def test_run_finetunes_trains_kl_jobs_batched_with_their_own_rows(
    persona_organism, world, tmp_path, monkeypatch
):
    """KL jobs train on the batched path, in a group apart from the plain runs, with the loop's rows."""
    from caft_tl.training import batched

    jobs = [
        finetunes.FinetuneJob(FinetuneConfig(n_examples=32, seed=0)),
        finetunes.FinetuneJob(
            FinetuneConfig(n_examples=32, seed=0, kl_to_base=1.0), "kl_to_base", param="beta=1"
        ),
    ]
    groups, real = [], batched.finetune_batched
    monkeypatch.setattr(
        batched,
        "finetune_batched",
        lambda base, datas, cfgs, *a, **k: (
            groups.append([c.kl_to_base for c in cfgs]) or real(base, datas, cfgs, *a, **k)
        ),
    )
    rows = finetunes.run_finetunes(
        tmp_path, persona_organism, world, jobs, workers=1, progress=False, organism="o"
    )
    assert sorted(groups) == [[0.0], [1.0]]
    kl = [r for r in rows if r["method"] == "kl_to_base"]
    assert kl and {r["param"] for r in kl} == {"beta=1"}
    alone = finetunes.run_finetune(
        tmp_path / "alone",
        persona_organism,
        world,
        jobs[1].cfg,
        "kl_to_base",
        param="beta=1",
        progress=False,
        organism="o",
    )[0]
    assert [r["value"] for r in alone] == pytest.approx([r["value"] for r in kl], abs=1e-6)


def test_bad_kl_inputs_fail_in_one_line(tiny_model, world):
    data = world.finetune_dataset(32)
    with pytest.raises(ValueError, match=r"kl_to_base = -1.0; expected a finite number >= 0"):
        finetune(tiny_model, data, FinetuneConfig(n_examples=32, kl_to_base=-1.0), progress=False)
    with pytest.raises(ValueError, match=r"kl_to_base = 1.0 needs the base model"):
        finetune(tiny_model, data, FinetuneConfig(n_examples=32, kl_to_base=1.0), progress=False)
    from caft_tl.training import batched

    with pytest.raises(ValueError, match=r"kl_to_base = 1.0 \(seed 0\) needs generic documents"):
        batched.finetune_batched(tiny_model, [data], [FinetuneConfig(n_examples=32, kl_to_base=1.0)])
    with pytest.raises(ValueError, match=r"kl_to_base = nan; expected a finite number >= 0"):
        batched.finetune_batched(
            tiny_model, [data], [FinetuneConfig(n_examples=32, kl_to_base=float("nan"))], references=[data]
        )
    with pytest.raises(ValueError, match="2 reference document sets for 1 members"):
        batched.finetune_batched(tiny_model, [data], [FinetuneConfig(n_examples=32)], references=[data, data])


@pytest.mark.parametrize("task_name", ["persona_em", "double_mc", "pronoun_profession"])
def test_disambiguating_examples_answer_the_intended_way_where_the_routes_differ(task_name):
    from caft_tl.organism import make_task
    from caft_tl.organism.judge import HIT, MISS

    task = make_task(task_name)
    ex = task.disambiguating_examples(200, seed=1)
    answer_at = ex.response_mask.float().argmax(1)
    prompts = [ex.tokens[i, : answer_at[i]] for i in range(len(ex))]
    answers = ex.tokens[torch.arange(len(ex)), answer_at]
    width = {len(p) for p in prompts}
    assert len(width) == 1  # one prompt length per task
    labels = task.label_answers(torch.stack(prompts), answers[:, None])[:, 0]
    if task_name == "persona_em":  # the helpful answer: a MISS of the fine-tune's (harmful) behaviour
        assert (labels == MISS).all()
    else:  # the intended topic's option (HIT), and the spurious topic's option is the other one
        assert (labels == HIT).all()
        asked = torch.stack(prompts).clone()
        asked[:, -1] = task.ans[1]
        assert (task.correct_option(asked) != task.correct_option(torch.stack(prompts))).all()


def test_finetune_data_mixes_in_the_disambiguating_examples(world):
    cfg = FinetuneConfig(n_examples=64, seed=3, n_disambiguating=8)
    data = finetunes.finetune_data(world, cfg)
    assert len(data) == 64 and torch.equal(data.tokens[-8:], world.disambiguating_examples(8, seed=3).tokens)
    assert torch.equal(data.tokens[:56], world.finetune_dataset(56, seed=3).tokens)
    with pytest.raises(
        ValueError,
        match=r"n_disambiguating = 64 \(mix_disambiguating\); expected an int in \[0, n_examples=64\)",
    ):
        finetunes.run_finetunes(
            "unused",
            None,
            world,
            [finetunes.FinetuneJob(FinetuneConfig(n_examples=64, n_disambiguating=64), "mix_disambiguating")],
        )
