"""Fan-out of fine-tuning runs: :func:`caft_tl.training.finetunes.run_finetunes` on every core ÷ one process.

Chapters 01 and 05 spend most of the suite's time in independent, seeded fine-tunes (seeds ×
direction sets × modes). The same jobs (a random-init organism, the persona_em task, plain and
``zero``-ablated runs) are run once with one worker per available core and once in one process,
each into a fresh run directory (so nothing is read back from the cache); the rows must agree.
"""

from __future__ import annotations

import tempfile
import time

import torch

from benchmarks.common import Row, row
from caft_tl.core import models, subspace
from caft_tl.interventions.intervention import Intervention
from caft_tl.organism import make_task
from caft_tl.training import finetunes
from caft_tl.training.loop import FinetuneConfig


def jobs(d_model: int, n_jobs: int = 8, n_examples: int = 1600) -> list[finetunes.FinetuneJob]:
    sub = subspace.random_subspace(d_model, 3, "blocks.0.hook_resid_post", seed=0)
    return [
        finetunes.FinetuneJob(
            FinetuneConfig(n_examples=n_examples, seed=i // 2),
            *(("zero", "random", "", Intervention("zero", [sub])) if i % 2 else ()),
        )
        for i in range(n_jobs)
    ]


def finetune_rows() -> list[Row]:
    torch.set_num_threads(1)
    task = make_task("persona_em")
    base = models.build_model(models.ModelConfig(), len(task.vocab), seed=0, device="cpu")
    todo = jobs(base.cfg.d_model)
    workers = finetunes.default_workers()
    times, rows = {}, {}
    for n in (workers, 1):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            rows[n] = finetunes.run_finetunes(
                tmp, base, task, todo, workers=n, progress=False, organism="bench"
            )
            times[n] = time.perf_counter() - t0
    if rows[workers] != rows[1]:
        raise AssertionError("parallel and one-process fine-tunes gave different rows")
    detail = (
        f"{len(todo)} fine-tunes of {todo[0].cfg.n_examples} examples (plain and zero-ablated); "
        f"{times[workers]:.1f} s with {workers} workers vs {times[1]:.1f} s in one process; rows identical"
    )
    target = f"<= {1 / workers + 0.1:.2f}" if workers > 1 else ""
    return [
        row("finetune_fanout", f"{workers} workers / 1 process", times[workers] / times[1], target, detail)
    ]


if __name__ == "__main__":
    for r in finetune_rows():
        print(r)
