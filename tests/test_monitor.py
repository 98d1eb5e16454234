"""The training-time monitor (caft_tl.training.monitor): it changes no training number on either path,
its readings are ‖P x‖ over response positions before the ablation, the two paths log the same
readings, the records reach metrics.json, and a bad setting fails in one line."""

import pytest
import torch

from caft_tl.core import files, models
from caft_tl.core.subspace import random_subspace
from caft_tl.interventions.intervention import Intervention
from caft_tl.training import batched, finetunes
from caft_tl.training.loop import FinetuneConfig, finetune
from caft_tl.training.monitor import Monitor, MonitorLog, monitor_frame

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def _setting(d_model):
    subs = [random_subspace(d_model, k, h, seed=i) for i, (k, h) in enumerate(zip((3, 2), HOOKS))]
    ivs = [
        None,
        Intervention("zero", subs[:1]),
        Intervention("grad_only", subs),
        Intervention("detached", subs),
    ]
    return subs, ivs


def _cfg(seed=0, n=64):
    return FinetuneConfig(n_examples=n, batch_size=16, seed=seed)


@pytest.mark.parametrize("micro", [None, 5])
def test_the_loop_trains_bit_for_bit_the_same_with_the_monitor(persona_organism, world, micro):
    subs, ivs = _setting(persona_organism.cfg.d_model)
    data = world.finetune_dataset(64, seed=0)
    for iv in ivs:
        runs = []
        for log in (None, MonitorLog(Monitor(subs, every=2))):
            model = models.copy_model(persona_organism)
            losses = finetune(model, data, _cfg(), iv, progress=False, micro_batch_size=micro, monitor=log)
            runs.append((losses, model.state_dict(), log))
        (plain_losses, plain_state, _), (losses, state, log) = runs
        assert losses == plain_losses
        assert all(torch.equal(plain_state[k], state[k]) for k in plain_state)
        assert log.steps == [0, 2] and len(log.values) == 2  # 4 steps, every 2


def test_the_batched_path_trains_the_same_and_logs_the_loops_readings(persona_organism, world):
    """With monitors (every 1 and every 3, one member without), the group's losses and weights equal
    the group's without them bit for bit, and every reading equals the loop's (≤ 1e-5)."""
    base = persona_organism
    subs, ivs = _setting(base.cfg.d_model)
    cfgs = [_cfg(seed=r, n=[64, 48, 64, 32][r]) for r in range(len(ivs))]
    datas = [world.finetune_dataset(c.n_examples, seed=c.seed) for c in cfgs]
    monitors = [Monitor(subs, every=1), Monitor(subs[::-1], every=3), None, Monitor(subs[1:], every=1)]
    logs = [MonitorLog(m) if m is not None else None for m in monitors]
    states0, losses0 = batched.finetune_batched(base, datas, cfgs, ivs, progress=False)
    states, losses = batched.finetune_batched(base, datas, cfgs, ivs, progress=False, monitors=logs)
    assert losses == losses0
    assert all(torch.equal(a[k], b[k]) for a, b in zip(states0, states) for k in a)
    for data, cfg, iv, monitor, log in zip(datas, cfgs, ivs, monitors, logs):
        if monitor is None:
            assert log is None
            continue
        alone = MonitorLog(monitor)
        finetune(models.copy_model(base), data, cfg, iv, progress=False, monitor=alone)
        assert log.steps == alone.steps == list(range(0, len(losses0[cfgs.index(cfg)]), monitor.every))
        torch.testing.assert_close(torch.tensor(log.values), torch.tensor(alone.values), atol=1e-5, rtol=1e-5)


def _direct(model, batch, q, hook, fwd_hooks=()):
    """Mean over response positions of ‖Qᵀ x‖ at ``hook``, from a cached forward pass."""
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        _, cache = model.run_with_cache(batch.tokens, names_filter=hook)
    norms = (cache[hook] @ q).norm(dim=-1)  # [batch, pos]
    mask = batch.position_mask("response")
    return float(norms[mask].mean())


@pytest.mark.parametrize("path", ["loop", "batched"])
def test_a_reading_is_the_projection_norm_before_the_ablation(tiny_model, world, path):
    """On a tiny model, step 0's readings (one batch = every row, so the order does not matter) equal
    ‖Qᵀ x‖ averaged over response positions: at the ablated hook before the ablation (the norm the
    model writes there, not 0), downstream of it with the ablation on."""
    subs, _ = _setting(tiny_model.cfg.d_model)
    iv = Intervention("zero", subs[:1])
    data = world.finetune_dataset(24, seed=0).trimmed()
    cfg = FinetuneConfig(n_examples=24, batch_size=24, seed=0)
    log = MonitorLog(Monitor(subs, every=1))
    if path == "loop":
        finetune(models.copy_model(tiny_model), data, cfg, iv, progress=False, monitor=log)
    else:
        batched.finetune_batched(tiny_model, [data], [cfg], [iv], progress=False, monitors=[log])
    record = log.series()
    (a, b), (q_a, q_b) = HOOKS, (s.basis.float() for s in subs)
    ablated = iv.fwd_hooks(data)
    want = {
        (a, a): _direct(tiny_model, data, q_a, a),  # before the ablation removes it
        (a, b): _direct(tiny_model, data, q_a, b, ablated),
        (b, b): _direct(tiny_model, data, q_b, b, ablated),
        (b, a): _direct(tiny_model, data, q_b, a),
    }
    got = {
        (a, a): record["subspaces"][a]["written"][0],
        (a, b): record["subspaces"][a]["other_hooks"][b][0],
        (b, b): record["subspaces"][b]["written"][0],
        (b, a): record["subspaces"][b]["other_hooks"][a][0],
    }
    assert record["steps"] == [0] and want[(a, a)] > 0.1
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-5), key
    frame = monitor_frame({"zero": [record]})
    assert len(frame) == 4 * len(record["steps"]) and set(frame["at"]) == {a, b}


@pytest.mark.parametrize("every", [0, -3, 2.5, True, "10"])
def test_a_bad_every_is_a_one_line_error(every):
    with pytest.raises(ValueError, match=rf"monitor every = {every!r}; expected a positive int") as e:
        Monitor([random_subspace(8, 1, HOOKS[0])], every=every)
    assert "\n" not in str(e.value)


def test_a_monitor_at_a_hook_the_model_lacks_fails_before_training(tiny_model, world):
    monitor = MonitorLog(Monitor([random_subspace(tiny_model.cfg.d_model, 1, "blocks.7.hook_resid_post")]))
    with pytest.raises(ValueError, match="blocks.7.hook_resid_post"):
        finetune(models.copy_model(tiny_model), world.finetune_dataset(8, seed=0), _cfg(n=8), monitor=monitor)


def test_run_finetunes_writes_the_readings_and_leaves_unmonitored_runs_as_they_were(
    persona_organism, world, tmp_path
):
    """A monitored job's metrics.json carries its readings and a config hash of its own; an
    unmonitored job's files have no monitor key, and its rows equal the monitored twin's."""
    subs, ivs = _setting(persona_organism.cfg.d_model)
    cfg = _cfg(n=32)
    jobs = [
        finetunes.FinetuneJob(cfg, "zero", "pca", "", ivs[1]),
        finetunes.FinetuneJob(cfg, "zero", "pca", "monitor", ivs[1], monitor=Monitor(subs, every=1)),
    ]
    rows = finetunes.run_finetunes(
        tmp_path, persona_organism, world, jobs, workers=1, progress=False, organism="o"
    )
    plain, monitored = (
        files.read_json(tmp_path / "finetunes" / f / "metrics.json")
        for f in ("zero-pca-seed0", "zero-pca-monitor-seed0")
    )
    assert "monitor" not in plain and plain["config_hash"] != monitored["config_hash"]
    assert plain["losses"] == monitored["losses"]
    assert monitored["monitor"] == finetunes.monitor_record(tmp_path, jobs[1])
    assert monitored["monitor"]["steps"] == list(range(len(plain["losses"])))
    half = len(rows) // 2
    assert [r["value"] for r in rows[:half]] == [r["value"] for r in rows[half:]]
    with pytest.raises(ValueError, match="no monitor readings"):
        finetunes.monitor_record(tmp_path, jobs[0])
