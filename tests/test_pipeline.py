"""A tiny end-to-end pipeline: pre-train → plain FT → diff → PCA → CAFT → evaluate."""

import pytest
import torch

from caft_tl.core import models, results, subspace
from caft_tl.core.activations import activations
from caft_tl.diffing import diffs
from caft_tl.directions import pca
from caft_tl.interventions.intervention import Intervention
from caft_tl.organism.judge import behaviour_rate, evaluate_task
from caft_tl.training import finetunes
from caft_tl.training.loop import FinetuneConfig, finetune
from caft_tl.training.pretrain import PretrainConfig, load_or_pretrain

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_mid"]


@pytest.fixture(scope="module")
def organism(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    cfg = PretrainConfig(steps=150, batch_size=32)
    model, world, folder = load_or_pretrain(
        "persona_em",
        model_cfg=models.ModelConfig(d_model=32, n_heads=2, d_head=16, d_mlp=64),
        cfg=cfg,
        cache_dir=cache,
        progress=False,
    )
    return model, world, folder, cache, cfg


def test_organism_is_cached_by_config(organism):
    model, world, folder, cache, cfg = organism
    again, _, folder2 = load_or_pretrain(
        "persona_em",
        model_cfg=models.ModelConfig(d_model=32, n_heads=2, d_head=16, d_mlp=64),
        cfg=cfg,
        cache_dir=cache,
        progress=False,
    )
    assert folder2 == folder
    tokens = world.eval_prompts("chat").tokens
    torch.testing.assert_close(model(tokens), again(tokens))


def test_pipeline_end_to_end(organism, tmp_path):
    base, world, *_ = organism
    cfg = FinetuneConfig(n_examples=256, batch_size=32, seed=0)
    rows, ft = finetunes.run_finetune(
        tmp_path, base, world, cfg, keep_model=True, progress=False, organism="persona_em-s0-test"
    )
    assert {r["split"] for r in rows} == {"chat", "code_train", "code_heldout"}
    assert all(
        tuple(r) == results.COLUMNS and r["trained"] and r["organism"] == "persona_em-s0-test" for r in rows
    )
    trained = [r["value"] for r in rows if r["split"] == "code_train" and r["metric"] == "insecure_rate"][0]
    base_rate = evaluate_task(base, world)["code_train"]["insecure_rate"]
    assert trained > base_rate  # the fine-tune learnt its task

    stats = diffs.collect_diff_stats(base, ft, world.finetune_dataset(64), HOOKS, progress=False)
    assert stats[HOOKS[0]]["diff"].count == 64  # one response-writing position per example
    subs = [pca.pca(stats[h]["diff"], 2, h)[0] for h in HOOKS]
    iv = Intervention("zero", subs)
    caft_rows, caft = finetunes.run_finetune(
        tmp_path,
        base,
        world,
        cfg,
        method="zero",
        directions="pca",
        intervention=iv,
        keep_model=True,
        progress=False,
        organism="persona_em-s0-test",
    )
    assert {r["method"] for r in caft_rows} == {"zero"} and len(caft_rows) == len(rows)
    # CAFT moves the activations far less inside the ablated subspace than plain fine-tuning does
    # (held-out prompts)
    held_out = world.finetune_dataset(128, seed=5)
    for name, model in (("plain", ft), ("caft", caft)):
        moments = diffs.collect_diff_stats(base, model, held_out, HOOKS, progress=False)
        energy = {
            s.hook_name: torch.trace(
                s.basis.T.double() @ moments[s.hook_name]["diff"].second_moment().double() @ s.basis.double()
            ).item()
            for s in subs
        }
        if name == "plain":
            plain_energy = energy
    for h in HOOKS:
        assert energy[h] < 0.5 * plain_energy[h], (h, energy[h], plain_energy[h])


def test_finished_runs_are_read_back_not_retrained(organism, tmp_path, monkeypatch):
    base, world, *_ = organism
    cfg = FinetuneConfig(n_examples=64, batch_size=32, seed=1)
    first, _ = finetunes.run_finetune(
        tmp_path, base, world, cfg, progress=False, organism="persona_em-s0-test"
    )
    monkeypatch.setattr(finetunes, "finetune", lambda *a, **k: pytest.fail("re-trained a finished run"))
    assert (
        finetunes.run_finetune(tmp_path, base, world, cfg, progress=False, organism="persona_em-s0-test")[0]
        == first
    )


def test_seeded_finetune_is_deterministic(organism):
    base, world, *_ = organism
    data = world.finetune_dataset(64, seed=0)
    losses = []
    for _ in range(2):
        m = models.copy_model(base)
        losses.append(finetune(m, data, FinetuneConfig(n_examples=64, batch_size=16, seed=5), progress=False))
    assert losses[0] == losses[1]


def test_nan_loss_stops_with_step_and_lr(organism):
    base, world, *_ = organism
    m = models.copy_model(base)
    with torch.no_grad():
        m.W_U.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"at step 0 \(lr=0.001\)"):
        finetune(m, world.finetune_dataset(32), FinetuneConfig(n_examples=32), progress=False)


def test_sampled_rate_agrees_with_exact(organism):
    base, world, *_ = organism
    prompts = world.eval_prompts("chat")
    exact = behaviour_rate(base, prompts, world)["rate"].mean()
    sampled = behaviour_rate(base, prompts, world, mode="sampled", n_samples=400)["rate"].nanmean()
    assert abs(exact - sampled) < 0.1
    with pytest.raises(ValueError, match="unknown evaluation mode"):
        behaviour_rate(base, prompts, world, mode="greedy")


@pytest.mark.parametrize("task_name,size", [("persona_em", "n_chat"), ("double_mc", "n_eval")])
def test_evaluate_task_scores_on_each_tasks_own_prompts_made_once(task_name, size):
    """evaluate_task reads each split's prompts and candidate labels once per task object; the rates
    equal behaviour_rate on freshly made prompts, and another task object (another design) gets its own."""
    from caft_tl.core.models import ModelConfig, build_model
    from caft_tl.organism import judge, make_task

    task = make_task(task_name, {size: 60})
    model = build_model(ModelConfig(), len(task.vocab), seed=0)
    got = evaluate_task(model, task)
    for split in task.eval_splits:
        fresh = behaviour_rate(model, task.eval_prompts(split), task)
        assert got[split][task.metric(split)] == pytest.approx(fresh["rate"].nanmean().item(), abs=1e-6)
    first = judge.eval_set(task, task.eval_splits[0], model.cfg.d_vocab)
    assert judge.eval_set(task, task.eval_splits[0], model.cfg.d_vocab) is first
    other = make_task(task_name, {size: 30})  # another design: its own prompts
    mine, theirs = (judge.eval_set(t, task.ood_split, model.cfg.d_vocab)[0] for t in (task, other))
    assert len(mine) == 60 and len(theirs) == 30


def test_hook_name_errors(organism):
    base, world, *_ = organism
    with pytest.raises(
        ValueError, match="unknown hook name 'blocks.0.hook_resid_pst'; closest: blocks.0.hook_resid_post"
    ):
        activations(base, world.eval_prompts("chat"), "blocks.0.hook_resid_pst")
    with pytest.raises(ValueError, match="layer 2 out of range"):
        models.check_hook_names(base, ["blocks.2.hook_resid_post"])


def test_model_save_load_roundtrip(organism, tmp_path):
    base, world, *_ = organism
    models.save_model(
        base, tmp_path / "m", models.ModelConfig(d_model=32, n_heads=2, d_head=16, d_mlp=64), {"x": 1}
    )
    back, meta = models.load_model(tmp_path / "m")
    assert meta == {"x": 1}
    tokens = world.eval_prompts("code_train").tokens
    torch.testing.assert_close(back(tokens), base(tokens))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        models.load_model(tmp_path / "nothing")


def test_cached_run_is_redone_when_the_base_model_changes(organism, tmp_path):
    base, world, *_ = organism
    cfg = FinetuneConfig(n_examples=32, batch_size=32, seed=2)
    first, _ = finetunes.run_finetune(
        tmp_path, base, world, cfg, progress=False, organism="persona_em-s0-test"
    )
    other = models.copy_model(base)
    with torch.no_grad():
        other.W_U.mul_(3.0)
    second, _ = finetunes.run_finetune(
        tmp_path, other, world, cfg, progress=False, organism="persona_em-s0-test"
    )
    assert first != second


def test_parallel_finetunes_match_one_process(organism, tmp_path):
    base, world, *_ = organism
    sub = subspace.random_subspace(base.cfg.d_model, 2, HOOKS[0], seed=0)
    jobs = [finetunes.FinetuneJob(FinetuneConfig(n_examples=64, batch_size=32, seed=s)) for s in (0, 1)]
    jobs.append(
        finetunes.FinetuneJob(
            FinetuneConfig(n_examples=64, batch_size=32, seed=0),
            "zero",
            "random",
            "",
            Intervention("zero", [sub]),
        )
    )
    forked = finetunes.run_finetunes(
        tmp_path / "forked", base, world, jobs, workers=2, progress=False, organism="persona_em-s0-test"
    )
    inline = finetunes.run_finetunes(
        tmp_path / "inline", base, world, jobs, workers=1, progress=False, organism="persona_em-s0-test"
    )
    assert forked == inline
    assert [r["seed"] for r in forked[:: len(forked) // 3]] == [0, 1, 0]  # rows come back in job order
    assert (tmp_path / "forked" / "finetunes" / "zero-random-seed0" / "metrics.json").exists()
