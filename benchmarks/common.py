"""Shared helpers for the benchmarks: timing, medians, result rows, peak memory in a subprocess."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    """One measured number of the benchmark table.

    ``ratio`` is the measured quantity (a ratio unless ``detail`` says otherwise), ``target`` the
    bound it is compared with as text (``<= 1.03``, ``>= 0.9``, ``flat``), ``ok`` the verdict.
    """

    benchmark: str
    setting: str
    ratio: float
    target: str
    ok: str
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def verdict(value: float, target: str) -> str:
    """'yes' / 'no' for a target like '<= 1.03' or '>= 0.9'; '' when the target is not a bound."""
    parts = target.split()
    if len(parts) != 2 or parts[0] not in ("<=", ">="):
        return ""
    bound = float(parts[1])
    good = value <= bound if parts[0] == "<=" else value >= bound
    return "yes" if good else "no"


def row(benchmark: str, setting: str, ratio: float, target: str, detail: str = "") -> Row:
    return Row(benchmark, setting, round(float(ratio), 4), target, verdict(ratio, target), detail)


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call (``perf_counter``)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> float:
    """Half the inter-quartile range relative to the median: a robust noise level."""
    if len(xs) < 4:
        return float("nan")
    q = statistics.quantiles(xs, n=4)
    return (q[2] - q[0]) / 2 / statistics.median(xs)


def run_json_subprocess(module: str, args: list[str], timeout: float = 600) -> dict:
    """Run ``python -m module args`` from the repo root and parse the last stdout line as JSON.

    Used to measure peak memory (``ru_maxrss``) of one workload in a fresh process.
    """
    cmd = [sys.executable, "-m", module, *args]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])
