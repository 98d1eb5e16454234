"""Batched fine-tuning and pre-training (:mod:`caft_tl.training.batched`) against one run at a time,
on one core; and the kernel start of a chapter (its import cell).

``batched_finetune``: ``run_finetunes`` (default: stacked groups) ÷ ``run_finetunes(batch=False)``,
both with one worker, fresh run directories, plain and ``zero``-ablated persona_em fine-tunes of the
default organism; the one-at-a-time time per run is measured on 16 runs and scaled for 64 (it is
linear in the runs). Rows must agree within 1e-5. ``detail`` gives the batched training step's
GFLOP/s (6·N·T per member) against a 512³ matmul on the same core, and the peak RSS per member.
``batched_pretrain``: 8 seeds through ``pretrain_many`` ÷ ``pretrain`` one after another.
``kernel_start``: seconds of a fresh interpreter importing what a chapter's first cells import (median of 3),
for a chapter that loads the organism and for one that reads the task only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import torch

from benchmarks.common import REPO, Row, median, row, run_json_subprocess
from caft_tl.core import models, subspace
from caft_tl.interventions.intervention import Intervention
from caft_tl.organism import make_task
from caft_tl.training import batched, finetunes
from caft_tl.training import pretrain as pt
from caft_tl.training.loop import FinetuneConfig

N_EXAMPLES = 1600  # 50 steps of 32


def _jobs(d_model: int, n: int) -> list[finetunes.FinetuneJob]:
    sub = subspace.random_subspace(d_model, 3, "blocks.0.hook_resid_post", seed=0)
    return [
        finetunes.FinetuneJob(
            FinetuneConfig(n_examples=N_EXAMPLES, seed=i // 2),
            *(("zero", "random", "", Intervention("zero", [sub])) if i % 2 else ()),
        )
        for i in range(n)
    ]


def _matmul_gflops() -> float:
    a = torch.randn(512, 512)
    a @ a
    t = time.perf_counter()
    for _ in range(20):
        a @ a
    return 20 * 2 * 512**3 / (time.perf_counter() - t) / 1e9


def _peak_per_member(n: int) -> float:
    """MiB of peak RSS increase (above the RSS before training) per member of an ``n``-member group's
    training, in a fresh process."""
    out = {}
    for r in (1, n):
        out[r] = run_json_subprocess("benchmarks.bench_batched", ["--memory", str(r)])["peak_mib"]
    return (out[n] - out[1]) / (n - 1)


def finetune_rows() -> list[Row]:
    torch.set_num_threads(1)
    task = make_task("persona_em")
    base = models.build_model(models.ModelConfig(), len(task.vocab), seed=0, device="cpu")
    n_params = sum(p.numel() for p in base.parameters())
    gflops_peak = _matmul_gflops()
    single_jobs = _jobs(base.cfg.d_model, 16)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ref = finetunes.run_finetunes(
            tmp, base, task, single_jobs, workers=1, progress=False, organism="bench", batch=False
        )
        per_run = (time.perf_counter() - t0) / len(single_jobs)
    out = []
    for n, target in ((16, ">= 5"), (64, ">= 8")):
        jobs = _jobs(base.cfg.d_model, n)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            rows = finetunes.run_finetunes(tmp, base, task, jobs, workers=1, progress=False, organism="bench")
            t_batched = time.perf_counter() - t0
        diff = max(abs(a["value"] - b["value"]) for a, b in zip(rows[: len(ref)], ref))
        if diff > 1e-5:
            raise AssertionError(f"batched rows differ from one-at-a-time by {diff:.2g}")
        # the training alone: achieved GFLOP/s
        datas = [task.finetune_dataset(j.cfg.n_examples, seed=j.cfg.seed) for j in jobs]
        t0 = time.perf_counter()
        _, losses = batched.finetune_batched(
            base, datas, [j.cfg for j in jobs], [j.intervention for j in jobs], progress=False
        )
        t_train = time.perf_counter() - t0
        tokens = sum(len(l) for l in losses) * 32 * datas[0].tokens.shape[1]
        gflops = 6 * n_params * tokens / t_train / 1e9
        mem = _peak_per_member(n)
        detail = (
            f"{n} fine-tunes of {N_EXAMPLES} examples (plain/zero, persona_em, d_model 64): "
            f"{t_batched:.1f} s batched "
            f"vs {per_run * n:.1f} s one at a time ({per_run:.2f} s a run, measured on 16); training step "
            f"{t_train / len(losses[0]) * 1e3:.0f} ms = {gflops:.1f} GFLOP/s (6·N·T) "
            f"vs 512³ matmul {gflops_peak:.0f} GFLOP/s; "
            f"peak RSS {mem:.2f} MiB per member; max |Δ| rows {diff:.1e}"
        )
        out.append(row("batched_finetune", f"{n} runs", per_run * n / t_batched, target, detail))
    return out


def pretrain_rows(n: int = 8, steps: int = 100) -> list[Row]:
    torch.set_num_threads(1)
    task = make_task("persona_em")
    design = models.ModelConfig()
    cfgs = [pt.PretrainConfig(steps=steps, seed=s) for s in range(n)]
    t0 = time.perf_counter()
    many = pt.pretrain_many(task, design, cfgs, progress=False)
    t_many = time.perf_counter() - t0
    t0 = time.perf_counter()
    alone = [pt.pretrain(task, design, c, progress=False) for c in cfgs]
    t_alone = time.perf_counter() - t0
    diff = max(abs(a - b) for (_, la), (_, lb) in zip(many, alone) for a, b in zip(la, lb))
    detail = (
        f"{n} seeds × {steps} steps (batch 64, persona_em, d_model 64): {t_many:.1f} s together "
        f"vs {t_alone:.1f} s alone; max |Δ loss| {diff:.1e}"
    )
    return [row("batched_pretrain", f"{n} organisms", t_alone / t_many, ">= 3", detail)]


def kernel_rows(repeats: int = 3) -> list[Row]:
    def secs(code: str) -> float:
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)
            ts.append(time.perf_counter() - t0)
        return median(ts)

    # a chapter that loads the organism builds a HookedTransformer (transformer_lens);
    # 06–08 read the task only
    model_cell = secs(
        "from caft_tl.runner.chapter import setup\nfrom caft_tl.training import finetunes\n"
        "import transformer_lens"
    )
    task_cell = secs(
        "from caft_tl.runner.chapter import setup\nfrom caft_tl.evaluation import population_analyses\n"
        "from caft_tl.core import files, results, stats\nfrom caft_tl.plotting import figures"
    )
    torch_s, tl_s = secs("import torch"), secs("import transformer_lens")
    detail = (
        f"median of {repeats} fresh interpreters: import torch {torch_s:.1f} s, "
        f"import transformer_lens {tl_s:.1f} s "
        f"(it imports transformers and datasets itself)"
    )
    return [
        row(
            "kernel_start",
            "chapter import cell (loads the organism: 00–05)",
            model_cell,
            "",
            detail + " (seconds, not a ratio)",
        ),
        row(
            "kernel_start",
            "chapter import cell (reads the task only: 06–08)",
            task_cell,
            "",
            "the same imports as chapter 06's cells, no transformer_lens (seconds, not a ratio)",
        ),
    ]


def batched_rows() -> list[Row]:
    return finetune_rows() + pretrain_rows() + kernel_rows()


def _memory(n: int) -> None:
    torch.set_num_threads(1)
    task = make_task("persona_em")
    base = models.build_model(models.ModelConfig(), len(task.vocab), seed=0, device="cpu")
    jobs = _jobs(base.cfg.d_model, n)
    datas = [task.finetune_dataset(j.cfg.n_examples, seed=j.cfg.seed) for j in jobs]
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    start, peak, done = rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    batched.finetune_batched(
        base, datas, [j.cfg for j in jobs], [j.intervention for j in jobs], progress=False
    )
    done.set()
    th.join()
    print(json.dumps({"peak_mib": (peak[0] - start) / 2**20}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--memory"]:
        _memory(int(sys.argv[2]))
    else:
        for r in batched_rows():
            print(r)
