"""`make real`: the real-model chapter (``notebooks/real/real_task.ipynb``) on each generated English
task, one after another, then every run's rows in one table.

    python -m caft_tl.runner.real_suite --run-dir runs/real --fig-dir figures/real [--tasks gender_pronoun ...] [-p NAME VALUE ...]

Each task runs into ``run-dir/<task>/`` (rows ``results.csv``, executed notebook ``real_task.ipynb``,
``timing.json``) with figures in ``fig-dir/<task>/``; the rows of all tasks are gathered into
``fig-dir/results.csv`` and ``fig-dir/TABLES.md`` (:mod:`scripts.real_tables` puts them in the README).
Every value is checked before the model is made or loaded: a bad task or parameter is one line, exit 2;
a failing chapter is one line naming the executed notebook that holds the traceback, exit 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import papermill

from caft_tl.core import files, results
from caft_tl.runner import parameters
from caft_tl.runner.suite import _value, kernel_manager, run_command

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "real" / "real_task.ipynb"
#: the generated English tasks, in the order `make real` runs them
TASKS = ("gender_pronoun", "double_mc_english", "em_advice")
#: what `make real` changes per task to fit its budget on 2 CPU cores (parameters given on the command line win):
#: the train-time family runs on gender_pronoun only (its steps are 5× cheaper: 15-token rows against 80–110)
TASK_PARAMS = {"double_mc_english": {"family": False}, "em_advice": {"family": False}}


def check(tasks: list[str], params: dict[str, object]) -> None:
    """Refuse unknown tasks and parameters (and values the run's config refuses) before any work."""
    from caft_tl.real import experiment

    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ValueError(f"unknown real task(s) {bad or tasks}; valid: {', '.join(TASKS)}")
    reserved = {"task", "run_dir", "fig_dir"} & set(params)
    if reserved:
        raise ValueError(f"parameter(s) {sorted(reserved)} are set by the runner (--tasks, --run-dir, --fig-dir)")
    declared = parameters.declared(NOTEBOOK)
    parameters.check(params, declared)
    for t in tasks:
        experiment.RealRunConfig.from_parameters({**declared, **TASK_PARAMS.get(t, {}), **params, "task": t})


def run(tasks: list[str], run_dir: str | Path = "runs/real", fig_dir: str | Path = "figures/real",
        params: dict[str, object] | None = None, progress: bool = True) -> dict[str, float]:
    """Execute the chapter once per task; returns seconds per task (also in ``run_dir/timings.json``)."""
    params = dict(params or {})
    check(tasks, params)
    run_dir, fig_dir = Path(run_dir).resolve(), Path(fig_dir).resolve()
    files.write_provenance(run_dir, {"tasks": list(tasks), "parameters": params})  # the commit and machine the rows come from
    timings: dict[str, float] = {}
    for task in tasks:
        out = run_dir / task / NOTEBOOK.name
        out.parent.mkdir(parents=True, exist_ok=True)
        (out.parent / results.RESULTS_FILE).unlink(missing_ok=True)  # a rerun replaces the task's rows
        print(f"▶ {task}", flush=True)
        t0 = time.perf_counter()
        try:
            papermill.execute_notebook(str(NOTEBOOK), str(out), cwd=str(NOTEBOOK.parent), kernel_name="python3", progress_bar=progress,
                                       kernel_manager_class=kernel_manager(out.with_suffix(".kernel.log")),
                                       parameters={**TASK_PARAMS.get(task, {}), **params, "task": task, "run_dir": str(out.parent), "fig_dir": str(fig_dir / task)})
        except BaseException as e:  # a failure, or Ctrl-C / SIGTERM (KeyboardInterrupt)
            e.chapter, e.notebook = f"real_task[{task}]", str(out)
            e.where, e.finished, e.unit = task, len(timings), "task(s)"
            raise
        timings[task] = round(time.perf_counter() - t0, 1)
        print(f"  {task}: {timings[task]} s", flush=True)
    files.write_json(run_dir / "timings.json", timings)
    gather(run_dir, fig_dir)
    return timings


def gather(run_dir: str | Path, fig_dir: str | Path) -> Path:
    """Every task's rows (``run_dir/<task>/results.csv``) → ``fig_dir/results.csv``, atomically."""
    tables = [results.read(p) for p in sorted(Path(run_dir).glob(f"*/{results.RESULTS_FILE}"))]
    if not tables:
        raise files.MissingArtefactError(f"no results under {str(run_dir)!r} (run_dir/<task>/{results.RESULTS_FILE}): run make real first")
    out = Path(fig_dir) / results.RESULTS_FILE
    results.write(out, pd.concat(tables, ignore_index=True))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/real")
    ap.add_argument("--fig-dir", default="figures/real")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), help=f"default: {' '.join(TASKS)}")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a chapter parameter for every task, e.g. -p seeds '[0, 1]' -p model /models/Qwen2.5-0.5B-Instruct")
    args = ap.parse_args(argv)
    params = {k: _value(v) for k, v in args.parameter}
    return run_command(lambda: run(args.tasks, args.run_dir, args.fig_dir, params), args.run_dir)


if __name__ == "__main__":
    sys.exit(main())
