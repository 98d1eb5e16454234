"""Run the notebook chapters with papermill: ``python -m caft_tl.runner.suite``.

Every task of :data:`TASKS` runs through the same chapters into ``run_dir/<task>`` (figures in
``fig_dir/<task>``); chapter 07 (the gates) runs for tasks that have them. The rows of every task
are gathered into ``fig_dir/results.csv``. Parameters are checked against each notebook's
``parameters`` cell *before* anything runs: papermill only warns about unknown names, the suite
refuses them (and ill-typed values).
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

import pandas as pd
import papermill

from caft_tl.core import files, results
from caft_tl.organism import task_class
from caft_tl.runner import parameters

#: the tasks ``make run`` runs, in order
TASKS = ("persona_em", "double_mc")

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"

#: a fast parameter set for smoke runs (tests, a first look): same code paths, tiny budgets
FAST_PARAMETERS = {
    "pretrain_steps": 150,
    "seeds": [0, 1],
    "n_examples": 320,
    "fewer_examples": [96],
    "n_diff_examples": 200,
    "sae_steps": 150,
    "n_rank_examples": 200,
}


#: a chapter's notebook metadata ``{"caft_tl": {"needs_gates": true}}``: it runs only for tasks with gates
NEEDS_GATES = "needs_gates"


def chapters(notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """Every chapter: the notebooks named ``NN_<name>.ipynb``, in order. A new chapter is a new notebook."""
    return sorted(Path(notebook_dir).glob("[0-9][0-9]_*.ipynb"))


def runs_for(notebook: Path, task: str) -> bool:
    """Whether a chapter runs for ``task``: always, unless its metadata says it needs gates the task lacks."""
    import nbformat

    needs = nbformat.read(str(notebook), as_version=4).metadata.get("caft_tl", {})
    return not needs.get(NEEDS_GATES, False) or task_class(task).has_gates


def check_parameters(params: dict[str, object], notebooks: list[Path]) -> None:
    """Refuse a parameter no chosen notebook declares, or one whose type differs from the default's."""
    defaults: dict[str, object] = {}
    for nb in notebooks:
        defaults.update(parameters.declared(nb))
    parameters.check(params, defaults)


def plan(only: list[str] | None = None, params: dict[str, object] | None = None, fast: bool = False,
         notebook_dir: Path = NOTEBOOK_DIR) -> list[tuple[Path, dict]]:
    """The chapters to run, in order, each with the parameters it declares; refuses unknown
    chapters, and parameters that no chosen chapter declares or of the wrong type. Without
    ``only``, a chapter that needs gates (:data:`NEEDS_GATES`) is left out for a ``task`` that has none."""
    notebooks = chapters(notebook_dir)
    if not only:
        task = (params or {}).get("task", parameters.declared(notebooks[0]).get("task"))
        notebooks = [nb for nb in notebooks if runs_for(nb, str(task))]
    else:
        known = {nb.stem[:2]: nb for nb in notebooks} | {nb.stem: nb for nb in notebooks}
        bad = [c for c in only if c not in known]
        if bad:
            raise ValueError(f"unknown chapter(s) {bad}; valid: {', '.join(nb.stem for nb in notebooks)}")
        notebooks = [known[c] for c in only]
    check_parameters(params or {}, notebooks)  # the fast set only applies where a chapter declares it
    merged = {**(FAST_PARAMETERS if fast else {}), **(params or {})}
    out = []
    for nb in notebooks:
        declared = parameters.declared(nb)
        out.append((nb, {k: v for k, v in merged.items() if k in declared}))
    return out


def run(
    run_dir: str | Path = "runs/default",
    fig_dir: str | Path = "figures",
    only: list[str] | None = None,
    params: dict[str, object] | None = None,
    fast: bool = False,
    progress: bool = True,
    tag: str = "",
    notebook_dir: Path = NOTEBOOK_DIR,
) -> dict[str, float]:
    """Execute the chapters (of ``notebook_dir``) in order into ``run_dir/notebooks``; returns
    seconds per chapter. ``tag`` prefixes the progress lines (the task, when several run at once)."""
    run_dir, fig_dir = Path(run_dir).resolve(), Path(fig_dir).resolve()
    steps = plan(only, params, fast, notebook_dir)
    from caft_tl.plotting import figures

    if note := figures.missing_browser_note():  # once here, not once per chapter; also checks $CAFT_TL_FIGURE_FORMATS
        print(f"note: {note}", flush=True)
    files.write_provenance(run_dir, {"chapters": [nb.stem for nb, _ in steps], "parameters": {nb.stem: p for nb, p in steps}, "fast": fast})
    timings: dict[str, float] = {}
    for nb, nb_params in steps:
        nb_params = {**nb_params, "run_dir": str(run_dir), "fig_dir": str(fig_dir)}
        out = run_dir / "notebooks" / nb.name
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"{tag}▶ {nb.stem}", flush=True)
        t0 = time.perf_counter()
        papermill.execute_notebook(str(nb), str(out), parameters=nb_params, cwd=str(nb.parent),
                                   kernel_name="python3", progress_bar=progress)
        timings[nb.stem] = round(time.perf_counter() - t0, 1)
        print(f"{tag}  {nb.stem}: {timings[nb.stem]} s", flush=True)
    previous = run_dir / "timings.json"  # a partial run updates its chapters' entries, keeps the others
    files.write_json(previous, {**(files.read_json(previous) if previous.exists() else {}), **timings})
    print(f"{tag}total {sum(timings.values()):.0f} s; executed notebooks in {run_dir / 'notebooks'}, figures in {fig_dir}")
    return timings


def run_tasks(
    tasks: list[str] | tuple[str, ...] = TASKS,
    run_dir: str | Path = "runs/default",
    fig_dir: str | Path = "figures",
    only: list[str] | None = None,
    params: dict[str, object] | None = None,
    fast: bool = False,
    progress: bool = True,
    workers: int = 1,
    notebook_dir: Path = NOTEBOOK_DIR,
) -> dict[str, float]:
    """:func:`run` for each task into ``run_dir/<task>`` and ``fig_dir/<task>``, ``workers`` tasks
    at a time (each in its own process; a chapter's start-up and single-threaded steps then overlap
    with the other task's fine-tunes); then every task's rows into ``fig_dir/results.csv``
    (:func:`gather_results`). Returns seconds per ``task/chapter`` (also in ``run_dir/timings.json``);
    ``run_dir/suite.json`` holds this call's tasks, workers and wall time."""
    if workers < 1:
        raise ValueError(f"workers = {workers}; expected at least 1")
    if "task" in (params or {}):
        raise ValueError("choose tasks with --tasks (tasks=...), not the task parameter")
    for t in tasks:
        task_class(t)  # an unknown task fails here, before anything runs
    own_params = {t: {**(params or {}), "task": t} if _runs_chapter_00(only) else params for t in tasks}  # chapter 00 takes the task
    plans = {t: plan(only, own_params[t], fast, notebook_dir) for t in tasks}
    run_dir, fig_dir = Path(run_dir), Path(fig_dir)
    parallel = workers > 1 and len(tasks) > 1
    jobs = [(run_dir / t, fig_dir / t, [nb.stem for nb, _ in plans[t]], own_params[t], fast, progress and not parallel, f"[{t}] ", notebook_dir)
            for t in tasks]
    t0 = time.perf_counter()
    if parallel:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=multiprocessing.get_context("fork")) as pool:
            done = list(pool.map(run, *zip(*jobs)))
    else:
        done = [run(*job) for job in jobs]
    timings = {f"{t}/{name}": s for t, own in zip(tasks, done) for name, s in own.items()}
    wall = round(time.perf_counter() - t0, 1)
    previous = run_dir / "timings.json"
    files.write_json(previous, {**(files.read_json(previous) if previous.exists() else {}), **timings})
    files.write_json(run_dir / "suite.json", {"tasks": list(tasks), "chapters": only or "all", "workers": workers, "wall_s": wall,
                                             "chapters_s": round(sum(timings.values()), 1)})
    gather_results(run_dir, fig_dir)
    print(f"all tasks: {wall:.0f} s wall ({sum(timings.values()):.0f} s of chapters); every task's rows in {fig_dir / 'results.csv'}")
    return timings


def _runs_chapter_00(only: list[str] | None) -> bool:
    return not only or any(c in ("00", chapters()[0].stem) for c in only)


def gather_results(run_dir: str | Path, fig_dir: str | Path) -> Path:
    """Write the rows of every task run under ``run_dir`` (``run_dir/<task>/results.csv``) to
    ``fig_dir/results.csv``, and chapter 06's summaries (``fig_dir/<task>/results_summary.csv``) to
    ``fig_dir/results_summary.csv``, atomically; returns the path of the rows."""
    tables = [results.read(p) for p in sorted(Path(run_dir).glob(f"*/{results.RESULTS_FILE}"))]
    if not tables:
        raise files.MissingArtefactError(f"no task results under {str(run_dir)!r} (run_dir/<task>/{results.RESULTS_FILE}): run the suite first")
    out = Path(fig_dir) / results.RESULTS_FILE
    results.write(out, pd.concat(tables, ignore_index=True))
    summaries = [pd.read_csv(p, keep_default_na=False) for p in sorted(Path(fig_dir).glob("*/results_summary.csv"))]
    if summaries:
        files.write_csv(Path(fig_dir) / "results_summary.csv", pd.concat(summaries, ignore_index=True))
    return out


def _value(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/default")
    ap.add_argument("--fig-dir", default="figures")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), help=f"organism tasks, each into run-dir/<task> (default: {' '.join(TASKS)})")
    ap.add_argument("--workers", type=int, default=1, help="tasks run at once, each in its own process (default 1)")
    ap.add_argument("--chapters", nargs="*", help="e.g. 00 01 or 05_caft (default: all)")
    ap.add_argument("--fast", action="store_true", help="tiny budgets: a smoke run in a few minutes")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = ap.parse_args(argv)
    try:
        run_tasks(args.tasks, args.run_dir, args.fig_dir, args.chapters, {k: _value(v) for k, v in args.parameter}, args.fast, workers=args.workers)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
