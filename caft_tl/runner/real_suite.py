"""`make real`: the real-model chapter (``notebooks/real/real_task.ipynb``) on each task card, one
after another, then every run's rows in one table.

    python -m caft_tl.runner.real_suite --run-dir runs/real --fig-dir figures/real \
        [--tasks gender_pronoun path/card.yaml ...] [-p NAME VALUE ...]
    python -m caft_tl.runner.real_suite -p task path/to/card.yaml
    python -m caft_tl.runner.real_suite -p train my/train.jsonl -p id my/id.jsonl -p ood my/ood.jsonl \
        -p metric reference

A task is a built-in name (the generated English tasks, the default), a card file (YAML / JSON,
:mod:`caft_tl.real.card`) or the card fields as parameters (paths relative to the current folder).
Each task runs into ``run-dir/<card name>/`` (rows ``results.csv``, executed notebook ``real_task.ipynb``,
``timing.json``) with figures in ``fig-dir/<card name>/``; the rows of all tasks are gathered into
``fig-dir/results.csv`` and ``fig-dir/TABLES.md`` (:mod:`scripts.real_tables` puts them in docs/results.md).
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
from caft_tl.real.card import FILE_KEYS, PARAMETER_KEYS
from caft_tl.real.tasks import TASKS
from caft_tl.runner import parameters
from caft_tl.runner.suite import _value, kernel_manager, run_command

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "real" / "real_task.ipynb"


def task_list(tasks: list[str] | None, params: dict[str, object]) -> list[str]:
    """The tasks to run: ``tasks`` (``--tasks``), or ``-p task`` (taken out of ``params``), or one
    task of the card fields in ``params`` (``-p train …``), or every generated task."""
    if "task" in params:
        if tasks:
            raise ValueError(
                f"give the task once: --tasks {' '.join(tasks)} or -p task {params['task']}, not both"
            )
        return [str(params.pop("task"))]
    if tasks:
        return list(tasks)
    return [""] if set(PARAMETER_KEYS) & set(params) else list(TASKS)


def absolute(tasks: list[str], params: dict[str, object]) -> tuple[list[str], dict[str, object]]:
    """Card files and card-field files relative to the current folder → absolute (the chapter runs
    in its own folder)."""
    path = lambda v: str(Path(str(v)).resolve()) if v else v
    is_file = lambda t: Path(t).suffix in (".yaml", ".yml", ".json") or Path(t).exists()
    tasks = [path(t) if t not in TASKS and is_file(t) else t for t in tasks]
    return tasks, {k: path(v) if k in FILE_KEYS else v for k, v in params.items()}


def check(tasks: list[str], params: dict[str, object]) -> list[str]:
    """Refuse unknown tasks, cards and parameters (and values the run's config refuses) before any
    work; returns each task's card name (its run folder)."""
    from caft_tl.real import experiment

    if not tasks:
        raise ValueError(
            f"no task given; valid: a built-in ({', '.join(TASKS)}), a card file, or -p train/id/ood/metric"
        )
    reserved = {"task", "run_dir", "fig_dir"} & set(params)
    if reserved:
        raise ValueError(
            f"parameter(s) {sorted(reserved)} are set by the runner (--tasks, --run-dir, --fig-dir)"
        )
    declared = parameters.declared(NOTEBOOK)
    parameters.check(params, declared)
    config = lambda t: experiment.RealRunConfig.from_parameters({**declared, **params, "task": t})
    names = [config(t).card.name for t in tasks]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"task name(s) {twice} given twice; each task runs into run_dir/<its card's name>/")
    return names


def run(
    tasks: list[str] | None = None,
    run_dir: str | Path = "runs/real",
    fig_dir: str | Path = "figures/real",
    params: dict[str, object] | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Execute the chapter once per task (:func:`task_list`); returns seconds per task (also in
    ``run_dir/timings.json``)."""
    params = dict(params or {})
    tasks, params = absolute(task_list(tasks, params), params)
    names = check(tasks, params)
    run_dir, fig_dir = Path(run_dir).resolve(), Path(fig_dir).resolve()
    files.write_provenance(
        run_dir, {"tasks": list(tasks), "parameters": params}
    )  # the commit and machine the rows come from
    timings: dict[str, float] = {}
    for task, name in zip(tasks, names):
        out = run_dir / name / NOTEBOOK.name
        out.parent.mkdir(parents=True, exist_ok=True)
        (out.parent / results.RESULTS_FILE).unlink(missing_ok=True)  # a rerun replaces the task's rows
        print(f"▶ {name}", flush=True)
        t0 = time.perf_counter()
        try:
            where = {"task": task, "run_dir": str(out.parent), "fig_dir": str(fig_dir / name)}
            papermill.execute_notebook(
                str(NOTEBOOK),
                str(out),
                cwd=str(NOTEBOOK.parent),
                kernel_name="python3",
                progress_bar=progress,
                kernel_manager_class=kernel_manager(out.with_suffix(".kernel.log")),
                parameters={**params, **where},
            )
        except BaseException as e:  # a failure, or Ctrl-C / SIGTERM (KeyboardInterrupt)
            e.chapter, e.notebook = f"real_task[{name}]", str(out)
            e.where, e.finished, e.unit = name, len(timings), "task(s)"
            raise
        timings[name] = round(time.perf_counter() - t0, 1)
        print(f"  {name}: {timings[name]} s", flush=True)
    files.write_json(run_dir / "timings.json", timings)
    gather(run_dir, fig_dir)
    return timings


def gather(run_dir: str | Path, fig_dir: str | Path) -> Path:
    """Every task's rows (``run_dir/<task>/results.csv``) → ``fig_dir/results.csv``, atomically."""
    tables = [results.read(p) for p in sorted(Path(run_dir).glob(f"*/{results.RESULTS_FILE}"))]
    if not tables:
        raise files.MissingArtefactError(
            f"no results under {str(run_dir)!r} (run_dir/<task>/{results.RESULTS_FILE}): run make real first"
        )
    out = Path(fig_dir) / results.RESULTS_FILE
    results.write(out, pd.concat(tables, ignore_index=True))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/real")
    ap.add_argument("--fig-dir", default="figures/real")
    ap.add_argument("--tasks", nargs="+", help=f"built-in names or card files (default: {' '.join(TASKS)})")
    ap.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help=(
            "a chapter parameter for every task, e.g. -p seeds '[0, 1]' -p model "
            "/models/Qwen2.5-0.5B-Instruct"
        ),
    )
    args = ap.parse_args(argv)
    params = {k: _value(v) for k, v in args.parameter}
    return run_command(lambda: run(args.tasks, args.run_dir, args.fig_dir, params), args.run_dir)


if __name__ == "__main__":
    sys.exit(main())
