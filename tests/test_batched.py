"""The batched path (caft_tl.training.batched): intervention math per member, a mixed batch against
its members trained alone, run_finetunes' rows, caching and resume, batched pre-training."""

import pytest
import torch

from caft_tl.core import models
from caft_tl.core.subspace import Subspace, random_subspace
from caft_tl.interventions.intervention import Intervention
from caft_tl.organism.judge import evaluate_task
from caft_tl.training import batched, finetunes
from caft_tl.training.loop import FinetuneConfig, finetune

D = 16
FORMULAS = {  # mode: (forward(h, P, mu, scale), gradient projected by I - P?)
    "zero": (lambda h, P, mu, s: h - h @ P, True),
    "mean": (lambda h, P, mu, s: h - (h - mu) @ P, True),
    "detached": (lambda h, P, mu, s: h - h @ P, False),
    "grad_only": (lambda h, P, mu, s: h, True),
    "steer_mean": (lambda h, P, mu, s: h - h @ P + s * mu @ P, True),
}


def _subspace(k, seed, hook="blocks.0.hook_resid_post"):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, k, generator=g, dtype=torch.float64))
    return Subspace(hook, q, reference_mean=torch.randn(D, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("positions", ["all", "prompt"])
def test_each_member_gets_its_own_mode_subspace_mean_and_scale(positions):
    """Members side by side (every mode, ranks 1-4, one member without an intervention, one at
    another hook): each member's forward value and upstream gradient are its mode's formula."""
    modes = ["zero", "mean", "detached", "grad_only", "steer_mean", "add"]
    ivs = [
        Intervention(m, [_subspace(1 + i % 4, i)], scale=[1.0, -3.0, 4.0][i % 3], positions=positions)
        for i, m in enumerate(modes)
    ]
    ivs += [None, Intervention("zero", [_subspace(2, 9, "blocks.1.hook_resid_mid")])]
    R, B, T = len(ivs), 2, 5
    g = torch.Generator().manual_seed(0)
    h = torch.randn(R, B, T, D, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(R, B, T, D, generator=g, dtype=torch.float64)
    target = torch.zeros(R, B, T, dtype=torch.bool)
    target[:, :, 2:4] = True
    stacked = batched.StackedInterventions(ivs, D, "cpu", dtype=torch.float64)
    out = stacked.fwd_hooks(target)["blocks.0.hook_resid_post"](h)
    (out * up).sum().backward()
    for r, iv in enumerate(ivs):
        hr, ur = h[r].detach(), up[r]
        if iv is None or iv.hook_names != ["blocks.0.hook_resid_post"]:
            want, want_grad = hr, ur
        else:
            s = iv.subspaces[0]
            P, mu = s.basis @ s.basis.T, s.reference_mean
            if iv.mode == "add":
                want, projected = hr + iv.scale * s.basis.sum(-1), False
            else:
                fwd, projected = FORMULAS[iv.mode]
                want = fwd(hr, P, mu, iv.scale)
            want_grad = ur - ur @ P if projected else ur
            if positions == "prompt":  # only the prompt positions (not the target ones) change
                keep = target[r][..., None]
                want, want_grad = torch.where(keep, hr, want), torch.where(keep, ur, want_grad)
        torch.testing.assert_close(out[r].detach(), want, atol=1e-10, rtol=0, msg=f"member {r} forward")
        torch.testing.assert_close(h.grad[r], want_grad, atol=1e-10, rtol=0, msg=f"member {r} gradient")


def _mixed(d_model):
    s0 = random_subspace(d_model, 3, "blocks.0.hook_resid_post", seed=1).with_mean(
        torch.linspace(-0.2, 0.2, d_model)
    )
    s1 = random_subspace(d_model, 1, "blocks.1.hook_resid_mid", seed=2).with_mean(
        torch.linspace(0.1, -0.1, d_model)
    )
    return [
        None,
        Intervention("zero", [s0]),
        Intervention("grad_only", [s0, s1]),
        Intervention("mean", [s1, s0]),
        Intervention("steer_mean", [s1], scale=-3.0, positions="prompt"),
        Intervention("add", [s0], scale=2.0, positions="response"),
        Intervention("detached", [s1]),
    ]


def _against_the_loop(base, world, state, losses, data, cfg, iv, **loop_kwargs):
    """One batched member against the one-at-a-time loop on its data and config: the largest gap of
    losses and metrics, the largest gap of logits on an evaluation split, and the loop's model."""
    alone = models.copy_model(base)
    want = finetune(alone, data, cfg, iv, progress=False, **loop_kwargs)
    assert len(losses) == len(want)
    mine = models.copy_model(base)
    mine.load_state_dict(state, strict=False)
    mine.eval()
    probe = world.eval_prompts(world.eval_splits[0]).tokens
    with torch.no_grad():
        logits_gap = (mine(probe) - alone(probe)).abs().max().item()
    a, b = evaluate_task(mine, world), evaluate_task(alone, world)
    gap = max(
        max(abs(x - y) for x, y in zip(losses, want)), max(abs(a[s][m] - b[s][m]) for s in a for m in a[s])
    )
    return gap, logits_gap, alone


def test_a_mixed_batch_equals_its_members_trained_alone(persona_organism, world):
    """Different modes, hooks, ranks, seeds, learning rates, weight decays and example counts in one
    group: every member's losses, logits and metrics equal the one-at-a-time loop's (≤ 1e-5)."""
    base = persona_organism
    ivs = _mixed(base.cfg.d_model)
    cfgs = [
        FinetuneConfig(
            n_examples=[96, 64, 96, 40, 96, 96, 64][i],
            batch_size=[32, 32, 16, 32, 32, 24, 32][i],
            seed=i,
            lr=2e-3 if i == 2 else 1e-3,
            weight_decay=0.1 if i == 4 else 0.0,
            epochs=2 if i == 6 else 1,
        )
        for i in range(len(ivs))
    ]
    datas = [world.finetune_dataset(c.n_examples, seed=c.seed) for c in cfgs]
    states, losses = batched.finetune_batched(base, datas, cfgs, ivs, progress=False)
    worst = 0.0
    for r, (c, iv, data) in enumerate(zip(cfgs, ivs, datas)):
        gap, logits_gap, _ = _against_the_loop(base, world, states[r], losses[r], data, c, iv)
        worst = max(worst, gap, logits_gap)
    assert worst <= 1e-5


def test_kl_members_equal_the_loop_with_its_reference(persona_organism, world):
    """Members with a KL-to-base term (different β, seeds, batch sizes, interventions; one without)
    in one group: losses and metrics equal the loop's with the base model as reference (≤ 1e-5), logits
    to 1e-4 (parameters whose gradient is zero in exact arithmetic, such as ``b_K``, get steps of
    Adam's size from rounding on either path; they move logits by ~3e-5 here, not the task's numbers)."""
    base = persona_organism
    s0 = random_subspace(base.cfg.d_model, 2, "blocks.0.hook_resid_post", seed=1)
    ivs = [None, Intervention("zero", [s0]), Intervention("grad_only", [s0], positions="response"), None]
    cfgs = [
        FinetuneConfig(
            n_examples=[64, 64, 48, 64][i],
            batch_size=[32, 16, 32, 32][i],
            seed=i,
            kl_to_base=[1.0, 0.3, 3.0, 0.0][i],
        )
        for i in range(4)
    ]
    datas = [world.finetune_dataset(c.n_examples, seed=c.seed) for c in cfgs]
    refs = [finetunes.kl_inputs(base, world, c).get("reference_data") for c in cfgs]
    states, losses = batched.finetune_batched(base, datas, cfgs, ivs, progress=False, references=refs)
    probe = world.eval_prompts(world.eval_splits[0]).tokens
    worst, worst_logits, moved = 0.0, 0.0, 0.0
    for r, (c, iv, data) in enumerate(zip(cfgs, ivs, datas)):
        gap, logits_gap, alone = _against_the_loop(
            base, world, states[r], losses[r], data, c, iv, **finetunes.kl_inputs(base, world, c)
        )
        worst, worst_logits = max(worst, gap), max(worst_logits, logits_gap)
        if c.kl_to_base:  # the penalty changed the run: without it the member ends elsewhere
            plain = models.copy_model(base)
            finetune(plain, data, FinetuneConfig(**{**c.__dict__, "kl_to_base": 0.0}), iv, progress=False)
            with torch.no_grad():
                moved = max(moved, (plain(probe) - alone(probe)).abs().max().item())
    assert worst <= 1e-5 and worst_logits <= 1e-4 and moved > 1e-3


def test_run_finetunes_rows_match_one_at_a_time_and_members_cache(
    persona_organism, world, tmp_path, monkeypatch
):
    base = persona_organism
    ivs = _mixed(base.cfg.d_model)
    jobs = [finetunes.FinetuneJob(FinetuneConfig(n_examples=64, seed=s)) for s in (0, 1)]
    jobs.append(finetunes.FinetuneJob(FinetuneConfig(n_examples=32, seed=0), "fewer_examples", param="n=32"))
    jobs += [
        finetunes.FinetuneJob(FinetuneConfig(n_examples=64, seed=1), iv.mode, "rand", iv.param, iv)
        for iv in ivs[1:]
    ]
    jobs.append(
        finetunes.FinetuneJob(
            FinetuneConfig(n_examples=64, seed=0),
            "zero",
            "ln",
            "",
            Intervention("zero", [random_subspace(base.cfg.d_model, 2, "blocks.0.ln1.hook_normalized")]),
        )
    )
    ref = finetunes.run_finetunes(
        tmp_path / "single", base, world, jobs, workers=1, progress=False, organism="o", batch=False
    )
    groups = []
    real = batched.finetune_batched
    monkeypatch.setattr(
        batched,
        "finetune_batched",
        lambda base, datas, *a, **k: groups.append(len(datas)) or real(base, datas, *a, **k),
    )
    rows = finetunes.run_finetunes(tmp_path / "b", base, world, jobs, workers=1, progress=False, organism="o")
    assert groups == [len(jobs) - 1]  # the ln1 hook is not on the stacked path: that job runs alone
    assert [{k: v for k, v in r.items() if k != "value"} for r in rows] == [
        {k: v for k, v in r.items() if k != "value"} for r in ref
    ]
    assert max(abs(a["value"] - b["value"]) for a, b in zip(rows, ref)) <= 1e-5
    # every member is cached in its own folder, as run_finetune caches it
    for job in jobs:
        again = finetunes.run_finetune(
            tmp_path / "b",
            base,
            world,
            job.cfg,
            job.method,
            job.directions,
            job.param,
            job.intervention,
            progress=False,
            organism="o",
        )[0]
        assert again == [
            r
            for r in rows
            if (r["method"], r["directions"], r["param"], r["seed"])
            == (job.method, job.directions, job.param, job.cfg.seed)
        ]
    # a finished member is skipped: delete two members' results, only they train again
    for job in jobs[:2]:
        (finetunes._Unit.make(tmp_path / "b", base, world, job, "o").folder / "metrics.json").unlink()
    groups.clear()
    assert (
        finetunes.run_finetunes(tmp_path / "b", base, world, jobs, workers=1, progress=False, organism="o")
        == rows
    )
    assert groups == [2]


def test_a_group_resumes_from_its_checkpoint(persona_organism, world, tmp_path):
    base = persona_organism
    ivs = _mixed(base.cfg.d_model)[:3]
    cfgs = [FinetuneConfig(n_examples=96, batch_size=16, seed=i) for i in range(3)]
    datas = [world.finetune_dataset(c.n_examples, seed=c.seed) for c in cfgs]
    whole = batched.finetune_batched(base, datas, cfgs, ivs, progress=False)
    ckpt = tmp_path / "group.safetensors"

    class Stop(Exception):
        pass

    real = batched._save_group

    def save_then_stop(*a):
        real(*a)
        raise Stop

    batched._save_group = save_then_stop
    try:
        with pytest.raises(Stop):
            batched.finetune_batched(
                base, datas, cfgs, ivs, progress=False, checkpoint=ckpt, checkpoint_every=2
            )
    finally:
        batched._save_group = real
    assert ckpt.exists()
    resumed = batched.finetune_batched(
        base, datas, cfgs, ivs, progress=False, checkpoint=ckpt, checkpoint_every=2
    )
    assert resumed[1] == whole[1]
    for a, b in zip(resumed[0], whole[0]):
        assert all(torch.equal(a[n], b[n]) for n in a)


def test_real_models_and_other_architectures_stay_on_the_one_at_a_time_path(tiny_model):
    assert batched.batchable(tiny_model) is None
    assert "not a HookedTransformer" in batched.batchable(torch.nn.Linear(2, 2))
    cfg = models.ModelConfig(d_model=32, n_heads=2, d_head=16, d_mlp=64, normalization_type="RMS")
    assert "normalization_type" in batched.batchable(models.build_model(cfg, 20, device="cpu"))


def test_batched_pretraining_equals_each_seed_alone(world, tmp_path):
    from caft_tl.training import pretrain as pt

    design = models.ModelConfig(d_model=32, n_heads=2, d_head=16, d_mlp=64)
    cfgs = [pt.PretrainConfig(steps=12, batch_size=16, warmup=5, seed=s) for s in (0, 1, 2)]
    together = pt.pretrain_many(world, design, cfgs, progress=False)
    probe = world.sample_documents(8, torch.Generator().manual_seed(9)).tokens
    for (model, losses), cfg in zip(together, cfgs):
        alone, want = pt.pretrain(world, design, cfg, progress=False)
        assert max(abs(a - b) for a, b in zip(losses, want)) <= 1e-5
        with torch.no_grad():
            assert (model(probe) - alone(probe)).abs().max().item() <= 1e-4
    # the cache: a cached seed is loaded, not trained again;
    # the one-at-a-time path never gets a batched organism
    got = pt.load_or_pretrain_many(
        "persona_em", model_cfg=design, cfgs=cfgs[:2], cache_dir=tmp_path, progress=False
    )
    again = pt.load_or_pretrain_many(
        "persona_em", model_cfg=design, cfgs=cfgs[1:2], cache_dir=tmp_path, progress=False
    )
    _, _, folder = pt.load_or_pretrain(
        "persona_em", model_cfg=design, cfg=cfgs[1], cache_dir=tmp_path, progress=False
    )
    assert again[0][2] == got[1][2] != folder
    with pytest.raises(ValueError, match="only in seed"):
        pt.pretrain_many(world, design, [cfgs[0], pt.PretrainConfig(steps=3, seed=1)])


def test_pretraining_rate_schedule_and_cache_key():
    from caft_tl.training import pretrain as pt

    cfg = pt.PretrainConfig(steps=100, warmup=10, decay=0.5)
    assert [cfg.lr_factor(s) for s in (0, 9, 49, 50, 75, 99)] == pytest.approx(
        [0.1, 1.0, 1.0, 1.0, 0.5, 0.02]
    )
    assert pt.PretrainConfig(steps=100, warmup=10).lr_factor(99) == 1.0  # no decay: constant after warm-up
    assert (
        "decay" not in pt.PretrainConfig().key() and pt.PretrainConfig(decay=0.5).key()["decay"] == 0.5
    )  # old cache keys stay
    with pytest.raises(ValueError, match=r"decay = 1.5; expected the share of the last steps"):
        pt.PretrainConfig(decay=1.5)
