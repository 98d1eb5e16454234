"""Training-time monitor overhead (:mod:`caft_tl.training.monitor`): fine-tune step time with the
monitor ÷ without, on both fine-tuning paths.

``monitor_overhead``: a ``zero``-ablated fine-tune of ``STEPS`` steps with rank-8 subspaces at 3
hooks, and a monitor on the same subspaces (reading ‖P x‖ at each hook every ``every`` steps), timed
against the same fine-tune without it; per step = the whole call ÷ its steps. The loop row runs
:func:`caft_tl.training.loop.finetune` on the intervention benchmark's model (L4, d_model 256, batch
8 × 64); the batched row runs :func:`caft_tl.training.batched.finetune_batched` with 16 members of
the default organism (persona_em, d_model 64, batch 32). Calls are paired (order alternating); the
ratio is the median over rounds of (monitored ÷ adjacent unmonitored).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from benchmarks.bench_interventions import BENCH_MODEL, make_intervention, make_setup
from benchmarks.common import Row, median, row, spread, timed
from caft_tl.core import models
from caft_tl.core.data import TokenDataset
from caft_tl.organism import make_task
from caft_tl.training import batched
from caft_tl.training.loop import FinetuneConfig, finetune
from caft_tl.training.monitor import Monitor, MonitorLog

STEPS = 20  #: optimiser steps per timed fine-tune
HOOKS = [f"blocks.{i}.hook_resid_post" for i in range(3)]


def _paired(run, rounds: int, desc: str) -> tuple[list[float], float]:
    """(monitored ÷ unmonitored per round, median unmonitored seconds) of ``run(monitored: bool)``."""
    run(False), run(True)  # warm-up
    ratios, plain = [], []
    for r in tqdm(range(rounds), desc=desc, leave=False):
        if r % 2:
            t_on, t_off = timed(lambda: run(True)), timed(lambda: run(False))
        else:
            t_off, t_on = timed(lambda: run(False)), timed(lambda: run(True))
        ratios.append(t_on / t_off)
        plain.append(t_off)
    return ratios, median(plain)


def loop_rows(rounds: int = 8, every: tuple[int, ...] = (10, 1)) -> list[Row]:
    """The loop path: one fine-tune of ``STEPS`` batches of 8 × 64 tokens, monitored every ``every``."""
    s = make_setup()
    batch = len(s.batch)
    data = TokenDataset(s.batch.tokens.repeat(STEPS, 1), s.batch.response_mask.repeat(STEPS, 1))
    iv = make_intervention("zero", HOOKS, BENCH_MODEL.d_model, 8)
    cfg = FinetuneConfig(batch_size=batch, lr=1e-5)
    out = []
    for n in every:
        monitor = Monitor(iv.subspaces, every=n)

        def run(on: bool, monitor: Monitor = monitor) -> None:
            finetune(s.model, data, cfg, iv, progress=False, monitor=MonitorLog(monitor) if on else None)

        ratios, t = _paired(run, rounds, f"monitor overhead, loop, every {n}")
        detail = (
            f"median of {len(ratios)} paired fine-tunes of {STEPS} steps; IQR/2 {spread(ratios):.1%}; "
            f"step {t / STEPS * 1e3:.1f} ms unmonitored; zero + monitor at 3 hooks, k=8; "
            f"model L{BENCH_MODEL.n_layers} d{BENCH_MODEL.d_model} batch {tuple(s.batch.tokens.shape)}; "
            "1 thread"
        )
        target = "<= 1.03" if n == 10 else ""
        out.append(row("monitor_overhead", f"loop, every {n}", median(ratios), target, detail))
    return out


def batched_rows(rounds: int = 8, members: int = 16, every: int = 10) -> list[Row]:
    """The batched path: ``members`` stacked persona_em fine-tunes of ``STEPS`` steps, all monitored."""
    task = make_task("persona_em")
    base = models.build_model(models.ModelConfig(), len(task.vocab), seed=0, device="cpu")
    iv = make_intervention("zero", HOOKS[:2], base.cfg.d_model, 8)  # an organism has 2 layers
    subs = iv.subspaces
    cfgs = [FinetuneConfig(n_examples=32 * STEPS, batch_size=32, seed=r) for r in range(members)]
    datas = [task.finetune_dataset(c.n_examples, seed=c.seed) for c in cfgs]
    monitor = Monitor(subs, every=every)

    def run(on: bool) -> None:
        logs = [MonitorLog(monitor) for _ in cfgs] if on else None
        batched.finetune_batched(base, datas, cfgs, [iv] * members, progress=False, monitors=logs)

    ratios, t = _paired(run, rounds, f"monitor overhead, batched, every {every}")
    detail = (
        f"median of {len(ratios)} paired group fine-tunes of {STEPS} steps; IQR/2 {spread(ratios):.1%}; "
        f"group step {t / STEPS * 1e3:.1f} ms unmonitored; {members} members (persona_em, d_model "
        f"{base.cfg.d_model}), zero + monitor at 2 hooks, k=8; 1 thread"
    )
    return [row("monitor_overhead", f"batched {members}, every {every}", median(ratios), "<= 1.03", detail)]


def monitor_rows(rounds: int = 8) -> list[Row]:
    torch.set_num_threads(1)
    return loop_rows(rounds) + batched_rows(rounds)


if __name__ == "__main__":
    for r in monitor_rows():
        print(r)
