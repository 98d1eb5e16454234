"""Diffing throughput and memory of :func:`caft_tl.diffing.diffs.collect_diff_stats`.

Throughput: tokens/s of the streamed base-vs-fine-tuned diff (two cached forward passes, the
masked difference and the float64 moment accumulation) ÷ tokens/s of two plain forward passes
(``model(tokens)`` under ``torch.inference_mode``) over the same batches. Repetitions of the two
are interleaved and the ratio of medians is reported.

Memory: for 4×, 16× and 64× a unit of sequences (a quarter of the throughput set: 8, 32 and 128
batches on the organism), a fresh subprocess builds the models and the
data, then samples its resident set size (RSS) every 2 ms while ``collect_diff_stats`` runs; the
reported number is the peak RSS *above the RSS just before the call* (so the dataset itself, which
grows with the size by construction, is not counted). Flat means: 64× ÷ 4× ≈ 1.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import psutil
import torch
from tqdm.auto import tqdm

from benchmarks.common import Row, median, row, run_json_subprocess, timed
from caft_tl.core import models
from caft_tl.core.data import TokenDataset
from caft_tl.diffing.diffs import collect_diff_stats

#: (name, model config, number of sequences at 1×, d_vocab)
CONFIGS = {
    "organism": (models.ModelConfig(), 2048, 160),
    "bench": (
        models.ModelConfig(n_layers=4, d_model=256, n_heads=8, d_head=32, d_mlp=1024, n_ctx=64),
        64,
        512,
    ),
}
#: the hooks chapter 02 diffs by default
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_mid"]
BATCH_SIZE = 256


def make_pair(cfg: models.ModelConfig, d_vocab: int, seed: int = 0):
    """A random base model and a 'fine-tune' = base with small weight noise (nonzero diffs)."""
    base = models.build_model(cfg, d_vocab, seed=seed, device="cpu").eval()
    ft = models.copy_model(base).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    return base, ft


def make_data(n: int, n_ctx: int, d_vocab: int, seed: int = 0) -> TokenDataset:
    """``n`` random sequences; the second half of each is the response."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, d_vocab, (n, n_ctx), generator=g)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, n_ctx // 2 :] = True
    return TokenDataset(tokens, mask)


@torch.inference_mode()
def plain_forwards(base, ft, data: TokenDataset, batch_size: int = BATCH_SIZE) -> None:
    """The reference: two plain forward passes over the same batches."""
    for batch in data.batches(batch_size):
        base(batch.tokens)
        ft(batch.tokens)


def diff(base, ft, data: TokenDataset, hooks=HOOKS, batch_size: int = BATCH_SIZE) -> None:
    collect_diff_stats(base, ft, data, hooks, positions="response", batch_size=batch_size, progress=False)


def full_forward_diff(base, ft, data: TokenDataset) -> None:
    """``collect_diff_stats`` as it was before the ``stop_at_layer`` fix: every block runs."""
    from caft_tl.diffing import diffs

    orig = diffs._stop_layer
    diffs._stop_layer = lambda model, hooks: None
    try:
        diff(base, ft, data)
    finally:
        diffs._stop_layer = orig


def throughput_ratio(name: str, reps: int = 3, progress: bool = True, before_fix: bool = False) -> Row:
    """tokens/s of diffing ÷ tokens/s of two plain forwards (interleaved, ratio of medians).

    ``before_fix``: time the pre-fix path (all blocks run, no ``stop_at_layer``) instead.
    """
    cfg, n, d_vocab = CONFIGS[name]
    run_diff = full_forward_diff if before_fix else diff
    base, ft = make_pair(cfg, d_vocab)
    data = make_data(n, cfg.n_ctx, d_vocab)
    diff(base, ft, data.subset(slice(0, BATCH_SIZE)))  # warm-up
    plain_forwards(base, ft, data.subset(slice(0, BATCH_SIZE)))
    t_diff, t_plain = [], []
    for r in tqdm(range(reps), desc=f"diffing throughput ({name})", disable=not progress):
        if r % 2:
            t_diff.append(timed(lambda: run_diff(base, ft, data)))
            t_plain.append(timed(lambda: plain_forwards(base, ft, data)))
        else:
            t_plain.append(timed(lambda: plain_forwards(base, ft, data)))
            t_diff.append(timed(lambda: run_diff(base, ft, data)))
    n_tok = data.tokens.numel()
    tps_diff, tps_plain = n_tok / median(t_diff), n_tok / median(t_plain)
    detail = (
        f"{tps_diff:,.0f} vs {tps_plain:,.0f} tok/s; {n} seqs x {cfg.n_ctx} tokens; "
        f"L{cfg.n_layers} d{cfg.d_model}; hooks {','.join(HOOKS)}; batch {BATCH_SIZE}; "
        f"median of {reps}; 1 thread"
    )
    setting = f"{name} model" + (" (before stop_at_layer fix)" if before_fix else "")
    return row("diffing_throughput", setting, tps_diff / tps_plain, ">= 0.9", detail)


def peak_rss_during(fn, interval: float = 0.002) -> tuple[int, int]:
    """(RSS before, peak RSS while ``fn`` runs), in bytes, by sampling in a thread."""
    proc = psutil.Process()
    before = proc.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        fn()
    finally:
        done.set()
        th.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return before, peak[0]


def memory_child(name: str, mult: int) -> dict:
    """Run in a fresh process: peak RSS increase of one ``collect_diff_stats`` call."""
    torch.set_num_threads(1)
    cfg, n, d_vocab = CONFIGS[name]
    base, ft = make_pair(cfg, d_vocab)
    data = make_data(n // 4 * mult, cfg.n_ctx, d_vocab)
    diff(base, ft, data.subset(slice(0, BATCH_SIZE)))  # warm-up: allocator pools, lazy imports
    before, peak = peak_rss_during(lambda: diff(base, ft, data))
    return {"mult": mult, "tokens": data.tokens.numel(), "rss_before": before, "peak_delta": peak - before}


def throughput_rows(reps: int = 3, progress: bool = True) -> list[Row]:
    """Both model sizes, plus the pre-fix path on the bench model (where it matters)."""
    rows = [throughput_ratio(name, reps, progress) for name in CONFIGS]
    rows.append(throughput_ratio("bench", reps, progress, before_fix=True))
    return rows


def memory_rows(name: str = "organism", mults=(4, 16, 64), progress: bool = True) -> list[Row]:
    """Peak RSS increase at each size (MiB) and the largest ÷ smallest ratio (target: flat).

    The smallest size is 4× (8 batches), not 1×: with 2 batches the allocator has not reached its
    steady state, so the first batches' growth would read as growth with the data.
    """
    res = []
    for m in tqdm(mults, desc="diffing memory", disable=not progress):
        res.append(run_json_subprocess("benchmarks.bench_diffing", ["--memory", name, str(m)]))
    cfg = CONFIGS[name][0]
    rows = []
    for r in res:
        kept = r["tokens"] // 2 * cfg.d_model * 4 * 2 * len(HOOKS)  # what keeping all activations would cost
        rows.append(
            row(
                "diffing_memory",
                f"{name} {r['mult']}x ({r['tokens']:,} tokens)",
                r["peak_delta"] / 2**20,
                "",
                f"MiB peak RSS above pre-call RSS (subprocess, sampled every 2 ms); keeping the selected "
                f"activations (ft and base, fp32) would need {kept / 2**20:.0f} MiB",
            )
        )
    ratio = res[-1]["peak_delta"] / max(res[0]["peak_delta"], 1)
    rows.append(
        row(
            "diffing_memory",
            f"{name} {mults[-1]}x / {mults[0]}x",
            ratio,
            "",
            f"peak RSS increase at {mults[-1]}x tokens / at {mults[0]}x "
            f"(flat = 1; allocator noise is a few MiB)",
        )
    )
    # the slope: extra peak memory per extra token, against what keeping the activations costs per token
    kept_per_token = cfg.d_model * 4 * 2 * len(HOOKS) / 2  # half the tokens are selected (response)
    slope = (res[-1]["peak_delta"] - res[0]["peak_delta"]) / (res[-1]["tokens"] - res[0]["tokens"])
    rows.append(
        row(
            "diffing_memory",
            f"{name} growth per token / keeping activations",
            slope / kept_per_token,
            "<= 0.05",
            f"{slope:.1f} B per extra token between {mults[0]}x and {mults[-1]}x "
            f"vs {kept_per_token:.0f} B per token "
            f"to keep the selected activations (flat = 0)",
        )
    )
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--memory", nargs=2, metavar=("CONFIG", "MULT"))
    args = ap.parse_args()
    if args.memory:
        print(json.dumps(memory_child(args.memory[0], int(args.memory[1]))))
    else:
        torch.set_num_threads(1)
        for r in throughput_rows():
            print(r)
        for r in memory_rows():
            print(r)
