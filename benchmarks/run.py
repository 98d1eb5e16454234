"""Run every benchmark once, print the table and write ``figures/benchmarks.csv`` (atomically).

``python -m benchmarks.run [--suite] [--only NAME ...] [--rounds N] [--out PATH]``; ``make bench``
runs it with the defaults (a few minutes on 2 cores), ``make bench SUITE=1`` adds a fresh suite run.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import pandas as pd
import torch

from benchmarks.common import REPO, Row
from caft_tl.core import files, models

BENCHMARKS = ("interventions", "monitor", "diffing", "finetunes", "batched", "peer", "lora", "suite")


def collect(name: str, args: argparse.Namespace) -> list[Row]:
    """The rows of one benchmark; a failing benchmark becomes one row saying why."""
    try:
        if name == "interventions":
            from benchmarks.bench_interventions import measure

            return measure(rounds=args.rounds)
        if name == "monitor":
            from benchmarks.bench_monitor import monitor_rows

            return monitor_rows(rounds=args.rounds)
        if name == "diffing":
            from benchmarks.bench_diffing import memory_rows, throughput_rows

            return throughput_rows() + memory_rows()
        if name == "finetunes":
            from benchmarks.bench_finetunes import finetune_rows

            return finetune_rows()
        if name == "batched":
            from benchmarks.bench_batched import batched_rows

            return batched_rows()
        if name == "peer":
            from benchmarks.bench_peer import peer_rows

            return peer_rows()
        if name == "lora":
            from benchmarks.bench_lora import lora_rows

            return lora_rows()
        if name == "suite":
            from benchmarks.bench_suite import suite_rows

            return suite_rows(run_suite=args.suite)
    except Exception as e:  # report, keep the other benchmarks
        return [Row(name, "error", float("nan"), "", "", f"{type(e).__name__}: {e}"[:300])]
    raise ValueError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}")


def table(rows: list[Row]) -> pd.DataFrame:
    return pd.DataFrame(
        [r.as_dict() for r in rows], columns=["benchmark", "setting", "ratio", "target", "ok", "detail"]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=BENCHMARKS, help="default: all")
    ap.add_argument(
        "--suite", action="store_true", help="run the whole suite first (minutes) for fresh suite timings"
    )
    ap.add_argument("--rounds", type=int, default=8, help="paired rounds per intervention setting")
    ap.add_argument("--out", default=str(REPO / "figures" / "benchmarks.csv"))
    args = ap.parse_args(argv)
    models.set_cpu_threads(1)  # as the suite does: one intra-op thread
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread, python {platform.python_version()}, "
        f"{platform.machine()}",
        flush=True,
    )
    rows: list[Row] = []
    t0 = time.perf_counter()
    for name in args.only or BENCHMARKS:
        t = time.perf_counter()
        rows += collect(name, args)
        print(f"{name}: {time.perf_counter() - t:.0f} s", flush=True)
    df = table(rows)
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 60):
        print(df.drop(columns="detail").to_string(index=False))
    files.write_csv(args.out, df)
    print(f"wrote {args.out} ({len(df)} rows) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
