"""Suite time: seconds per chapter and in total, from ``runs/default/timings.json``.

``caft_tl.runner.suite`` writes that file after a run (``make run``). By default this benchmark only reads
it (a full run takes minutes); ``run_suite=True`` (``make bench SUITE=1``) first runs the whole
suite into a scratch run directory and reads the fresh timings instead.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO, Row, row
from caft_tl.core import files

TARGET_S, STRETCH_S = 600, 300
#: the batched-training issue's goal for a population run: a third of the seconds per organism when it was
#: filed (one organism per task, 427 s wall for both tasks on a fresh clone, cache empty)
PER_ORGANISM_S = 427 / 2 / 3


def fresh_timings(run_dir: Path) -> Path:
    """Run every chapter of every task with ``python -m caft_tl.runner.suite`` into ``run_dir``, as ``make
    run`` does; returns timings.json."""
    cmd = [
        sys.executable,
        "-m",
        "caft_tl.runner.suite",
        "--run-dir",
        str(run_dir),
        "--fig-dir",
        str(run_dir / "figures"),
        "--workers",
        "2",
        "--pretrain-seeds",
        "0",
        "1",
    ]  # as make run
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    print(f"suite wall time {time.perf_counter() - t0:.0f} s")
    return run_dir / "timings.json"


def suite_rows(timings_path: Path | None = None, run_suite: bool = False) -> list[Row]:
    """One row per chapter (seconds, share of total) and the total vs 600 s and 300 s."""
    if run_suite:
        timings_path = fresh_timings(REPO / "runs" / "bench_suite")
    timings_path = Path(timings_path or REPO / "runs" / "default" / "timings.json")
    if not timings_path.exists():
        return [
            Row(
                "suite_time",
                "total",
                float("nan"),
                f"<= {TARGET_S}",
                "",
                f"no {timings_path.relative_to(REPO)}: run `make run` or `make bench SUITE=1`",
            )
        ]
    timings = files.read_json(timings_path)
    src = (
        "seconds, from "
        f"{timings_path.relative_to(REPO) if timings_path.is_relative_to(REPO) else timings_path}"
    )
    chapters_s = sum(timings.values())
    rows = [
        row("suite_time", chapter, s, "", f"{src}; {s / chapters_s:.0%} of the chapters' time")
        for chapter, s in timings.items()
    ]
    suite_call = timings_path.with_name(
        "suite.json"
    )  # tasks at once: chapters overlap, the call's wall time is the total
    if suite_call.exists():
        call = files.read_json(suite_call)
        total, src = (
            call["wall_s"],
            f"wall seconds of the last suite call (tasks {' '.join(call['tasks'])}, "
            f"chapters {call['chapters']}, workers {call['workers']})",
        )
    else:
        total = chapters_s
    rows.append(row("suite_time", "total", total, f"<= {TARGET_S}", src))
    rows.append(row("suite_time", "total (stretch)", total, f"<= {STRETCH_S}", src))
    if suite_call.exists() and "organisms" in call:  # a population run: the budget is per organism
        rows.append(
            row(
                "suite_time",
                "seconds per organism",
                total / call["organisms"],
                f"<= {PER_ORGANISM_S:.0f}",
                f"{src}; {call['organisms']} organisms",
            )
        )
    return rows


if __name__ == "__main__":
    for r in suite_rows():
        print(r)
