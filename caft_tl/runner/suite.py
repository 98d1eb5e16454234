"""Run the notebook chapters with papermill: ``python -m caft_tl.runner.suite``.

Every task of :data:`TASKS` runs as a population of organisms (one per pre-training seed), each
through the same chapters into ``run_dir/<task>/seed<s>`` (figures in ``fig_dir/<task>/seed<s>``);
chapter 07 (the validity gates) runs for tasks that have them. The rows of every organism are
gathered into ``fig_dir/results.csv``, and each task's validity and summary over valid organisms
into ``fig_dir/<task>/population_*.csv``. Parameters are checked against each notebook's
``parameters`` cell *before* anything runs: papermill only warns about unknown names, the suite
refuses them (and ill-typed values).
"""

from __future__ import annotations

import argparse
import ast
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import papermill

from caft_tl.core import files, results
from caft_tl.organism import make_task, task_class
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
    "kl_betas": [1.0],
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


def plan(
    only: list[str] | None = None,
    params: dict[str, object] | None = None,
    fast: bool = False,
    notebook_dir: Path = NOTEBOOK_DIR,
) -> list[tuple[Path, dict]]:
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

    if (
        note := figures.missing_browser_note()
    ):  # once here, not once per chapter; also checks $CAFT_TL_FIGURE_FORMATS
        print(f"note: {note}", flush=True)
    files.write_provenance(
        run_dir,
        {
            "chapters": [nb.stem for nb, _ in steps],
            "parameters": {nb.stem: p for nb, p in steps},
            "fast": fast,
        },
    )
    timings: dict[str, float] = {}
    for nb, nb_params in steps:
        nb_params = {**nb_params, "run_dir": str(run_dir), "fig_dir": str(fig_dir)}
        out = run_dir / "notebooks" / nb.name
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"{tag}▶ {nb.stem}", flush=True)
        t0 = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(nb),
                str(out),
                parameters=nb_params,
                cwd=str(nb.parent),
                kernel_name="python3",
                progress_bar=progress,
                kernel_manager_class=kernel_manager(out.with_suffix(".kernel.log")),
            )
        except BaseException as e:  # a failure, or Ctrl-C / SIGTERM (KeyboardInterrupt)
            e.chapter, e.notebook = (
                nb.stem,
                str(out),
            )  # for failure_line (kept when pickled back from a worker)
            e.where, e.finished = f"{tag.strip(' []')}/{nb.stem}".lstrip("/"), len(timings)
            raise
        timings[nb.stem] = round(time.perf_counter() - t0, 1)
        print(f"{tag}  {nb.stem}: {timings[nb.stem]} s", flush=True)
    previous = run_dir / "timings.json"  # a partial run updates its chapters' entries, keeps the others
    files.write_json(previous, {**(files.read_json(previous) if previous.exists() else {}), **timings})
    print(
        f"{tag}total {sum(timings.values()):.0f} s; executed notebooks in {run_dir / 'notebooks'}, figures "
        f"in {fig_dir}"
    )
    return timings


def kernel_manager(log: Path) -> type:
    """A Jupyter kernel manager whose kernels write their own stderr (their log lines, the noise of a
    kernel stopped by Ctrl-C) to ``log`` rather than the terminal; a cell's errors are in the notebook."""
    from jupyter_client.manager import AsyncKernelManager

    class KernelLogManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw):
            with open(log, "ab") as f:  # the kernel holds its own copy of the descriptor
                return await super()._async_launch_kernel(kernel_cmd, **{**kw, "stderr": f})

    return KernelLogManager


def organism_dir(seed: int) -> str:
    """The folder of one organism of a task's population: ``seed<pre-training seed>``."""
    return f"seed{seed}"


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
    pretrain_seeds: list[int] | None = None,
) -> dict[str, float]:
    """:func:`run` for each organism of each task — a population: one pre-training seed each, of
    ``pretrain_seeds`` (default: the task's own seed), into ``run_dir/<task>/seed<s>`` and
    ``fig_dir/<task>/seed<s>`` — ``workers`` organisms at a time (each in its own process). Then
    every organism's rows into ``fig_dir/results.csv`` (:func:`gather_results`) and, per task, the
    validity of each organism and the summary over the valid ones, with chapters 05–06's analyses
    over them (:func:`summarise_population`, in ``fig_dir/<task>/``) and its population figures
    (:mod:`caft_tl.plotting.population_figures`), and the results page
    ``fig_dir/index.html`` (:func:`caft_tl.plotting.results_page.write`). Returns seconds per
    ``task/seed<s>/chapter`` (also in ``run_dir/timings.json``); ``run_dir/suite.json`` holds this
    call's tasks, their design (``task_cfg``), organisms, workers and wall time."""
    if workers < 1:
        raise ValueError(f"workers = {workers}; expected at least 1")
    for name in ("task", "seed"):
        if name in (params or {}):
            raise ValueError(
                f"choose {'tasks with --tasks' if name == 'task' else 'organisms with --pretrain-seeds'}, "
                f"not the {name} parameter"
            )
    if pretrain_seeds is not None and (
        not pretrain_seeds or not all(isinstance(s, int) and s >= 0 for s in pretrain_seeds)
    ):
        raise ValueError(
            f"pretrain_seeds = {pretrain_seeds!r}; expected a non-empty list of non-negative integers"
        )
    for t in tasks:
        make_task(
            t, (params or {}).get("task_cfg")
        )  # an unknown task or design parameter fails here, before anything runs
    population = {
        t: list(pretrain_seeds) if pretrain_seeds is not None else [task_class(t).defaults["seed"]]
        for t in tasks
    }
    parallel = workers > 1 and sum(map(len, population.values())) > 1
    jobs, keys = [], []
    for t in tasks:
        for seed in population[t]:
            own = (
                {**(params or {}), "task": t, "seed": seed} if _runs_chapter_00(only) else params
            )  # chapter 00 makes the organism
            steps = plan(only, own, fast, notebook_dir)
            keys.append(f"{t}/{organism_dir(seed)}")
            jobs.append(
                (
                    Path(run_dir) / keys[-1],
                    Path(fig_dir) / keys[-1],
                    [nb.stem for nb, _ in steps],
                    own,
                    fast,
                    progress and not parallel,
                    f"[{keys[-1]}] ",
                    notebook_dir,
                )
            )
    run_dir, fig_dir = Path(run_dir), Path(fig_dir)
    t0 = time.perf_counter()
    if parallel:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(
            min(workers, len(jobs)), mp_context=multiprocessing.get_context("fork")
        ) as pool:
            done = list(pool.map(run, *zip(*jobs)))
    else:
        done = []
        for job in jobs:
            try:
                done.append(run(*job))
            except KeyboardInterrupt as e:
                e.finished = getattr(e, "finished", 0) + sum(map(len, done))  # chapters finished before
                raise
    timings = {f"{k}/{name}": s for k, own in zip(keys, done) for name, s in own.items()}
    wall = round(time.perf_counter() - t0, 1)
    previous = run_dir / "timings.json"
    files.write_json(previous, {**(files.read_json(previous) if previous.exists() else {}), **timings})
    files.write_json(
        run_dir / "suite.json",
        {
            "tasks": list(tasks),
            "task_cfg": (params or {}).get("task_cfg") or {},
            "pretrain_seeds": population,
            "chapters": only or "all",
            "workers": workers,
            "wall_s": wall,
            "chapters_s": round(sum(timings.values()), 1),
            "organisms": len(keys),
        },
    )
    gather_results(run_dir, fig_dir)
    print(
        f"all tasks: {len(keys)} organisms, {wall:.0f} s wall ({sum(timings.values()):.0f} s of chapters); "
        f"every row in {fig_dir / 'results.csv'}"
    )
    if only is None or "06" in only or any(c.startswith("06") for c in only):
        from caft_tl.plotting import population_figures

        for t in tasks:
            print(
                summarise_population(run_dir / t, fig_dir / t, make_task(t, (params or {}).get("task_cfg")))
            )
            try:
                drawn = population_figures.write_task(fig_dir, t)
                print(f"  population figures: {', '.join(p.stem for p in drawn)}")
            except population_figures.NoValidOrganismError as e:
                print(f"  note: {e}")
    from caft_tl.plotting import results_page

    print(f"results page: {results_page.write(fig_dir, run_dir)}")
    return timings


def summarise_population(task_dir: Path, task_fig_dir: Path, task) -> str:
    """The population files of one task (:func:`caft_tl.evaluation.population.write`, then chapters
    05–06's analyses over its valid organisms, :func:`caft_tl.evaluation.population_analyses.write`,
    and chapters 09–10's, :func:`caft_tl.evaluation.population_route_around.write`);
    its headline line, and a line per analysis file not read for every valid organism."""
    from caft_tl.evaluation import population, population_analyses, population_route_around

    verdicts, summary = population.write(task_dir, task_fig_dir, task)
    valid = list(verdicts.loc[verdicts["valid"], "organism"])
    coverage = population_analyses.write(task_dir, task_fig_dir, task, valid)
    missing = population_route_around.write(task_dir, task_fig_dir, valid)
    headline = population.headline(task.name, verdicts, summary, task.ood_split, task.metric(task.ood_split))
    notes = population_analyses.notes(coverage) + [
        f"{file}: missing for {len(who)} of {len(valid)} valid organisms ({', '.join(who)})"
        for file, who in missing.items()
        if who
    ]
    return "\n".join([headline, *(f"  note: {n}" for n in notes)])


def _runs_chapter_00(only: list[str] | None) -> bool:
    return not only or any(c in ("00", chapters()[0].stem) for c in only)


def gather_results(run_dir: str | Path, fig_dir: str | Path) -> Path:
    """Write the rows of every organism run under ``run_dir`` (``run_dir/<task>/<organism>/results.csv``)
    to ``fig_dir/results.csv``, and chapter 06's summaries (``fig_dir/<task>/<organism>/results_summary.csv``)
    to ``fig_dir/results_summary.csv``, atomically; returns the path of the rows."""
    tables = [results.read(p) for p in sorted(Path(run_dir).glob(f"*/*/{results.RESULTS_FILE}"))]
    if not tables:
        raise files.MissingArtefactError(
            f"no results under {str(run_dir)!r} (run_dir/<task>/<organism>/{results.RESULTS_FILE}): run the "
            "suite first"
        )
    out = Path(fig_dir) / results.RESULTS_FILE
    results.write(out, pd.concat(tables, ignore_index=True))
    summaries = [
        files.read_csv(p, keep_default_na=False)
        for p in sorted(Path(fig_dir).glob("*/*/results_summary.csv"))
    ]
    if summaries:
        files.write_csv(Path(fig_dir) / "results_summary.csv", pd.concat(summaries, ignore_index=True))
    return out


def failure_line(e: BaseException, run_dir: str | Path | None = None) -> str:
    """One line for a failed run: the chapter, the exception's type and first line, and the
    executed notebook that holds the full traceback. The chapter is the one :func:`run` was
    executing (or, without that, the last executed notebook under ``run_dir/notebooks``)."""
    if isinstance(e, papermill.PapermillExecutionError):
        ename, evalue = e.ename, str(e.evalue or "")
    else:
        ename, evalue = type(e).__name__, str(e)
    lines = [line.strip() for line in evalue.splitlines() if line.strip()]
    reason = f"{ename}: {lines[0]}" if lines else ename
    chapter, notebook = getattr(e, "chapter", None), getattr(e, "notebook", None)
    if chapter is None and run_dir is not None:
        executed = sorted((Path(run_dir) / "notebooks").glob("*.ipynb"), key=lambda p: p.stat().st_mtime)
        if executed:
            chapter, notebook = executed[-1].stem, str(executed[-1])
    if chapter is None:
        return reason
    return f"{chapter}: {reason}" + (
        f" (full traceback in {notebook})" if notebook and Path(notebook).exists() else ""
    )


def _value(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/default")
    ap.add_argument("--fig-dir", default="figures")
    ap.add_argument(
        "--tasks",
        nargs="+",
        default=list(TASKS),
        help=f"organism tasks, each into run-dir/<task> (default: {' '.join(TASKS)})",
    )
    ap.add_argument(
        "--workers", type=int, default=1, help="organisms run at once, each in its own process (default 1)"
    )
    ap.add_argument(
        "--pretrain-seeds",
        type=int,
        nargs="+",
        help="the population: one organism per pre-training seed (default: the task's seed)",
    )
    ap.add_argument("--chapters", nargs="*", help="e.g. 00 01 or 05_caft (default: all)")
    ap.add_argument("--fast", action="store_true", help="tiny budgets: a smoke run in a few minutes")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = ap.parse_args(argv)
    params = {k: _value(v) for k, v in args.parameter}

    def work() -> None:
        run_tasks(
            args.tasks,
            args.run_dir,
            args.fig_dir,
            args.chapters,
            params,
            args.fast,
            workers=args.workers,
            pretrain_seeds=args.pretrain_seeds,
        )

    return run_command(work, args.run_dir)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt (so every ``finally`` and
    atomic write cleans up the same way)."""

    signum = signal.SIGTERM


def _terminate(signum, frame) -> None:
    raise Terminated()


def run_command(work: Callable[[], object], run_dir: str | Path) -> int:
    """Run a command-line entry's ``work`` and return its exit status, never a traceback: 0; a
    failure (:func:`report_failure`: 2 or 1); Ctrl-C or SIGTERM (:func:`report_interrupt`: 130 / 143)."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        work()
    except KeyboardInterrupt as e:
        return report_interrupt(e, run_dir)
    except Exception as e:
        in_kernel = isinstance(e, papermill.PapermillExecutionError) and e.ename == "KeyboardInterrupt"
        if in_kernel:  # Ctrl-C reached the kernel first
            return report_interrupt(e, run_dir)
        return report_failure(e)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def report_interrupt(e: BaseException, run_dir: str | Path) -> int:
    """Print one line for an interrupted run — where it stopped, what it keeps, that the same
    command resumes — and return 128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)  # the stopped kernel's task: no traceback
    signum = getattr(e, "signum", signal.SIGINT)
    where = f" during {e.where}" if getattr(e, "where", None) else ""
    unit = getattr(e, "unit", "chapter(s)")
    finished = f"{e.finished} {unit} finished before it; " if getattr(e, "finished", None) else ""
    print(
        f"interrupted ({signal.Signals(signum).name}){where}: {finished}finished work is kept in "
        f"{str(run_dir)!r} and the same command resumes (an interrupted fine-tune from its last "
        "checkpoint)",
        file=sys.stderr,
    )
    return 128 + signum


def report_failure(e: BaseException) -> int:
    """Print one line for a failed command-line run and return its exit status: ``error: …`` and 2
    for input refused before anything ran, ``failed: …`` (:func:`failure_line`) and 1 otherwise."""
    if not hasattr(e, "chapter") and isinstance(e, (ValueError, TypeError, FileNotFoundError)):
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    if not hasattr(e, "chapter") and isinstance(e, files.WriteError):
        print(f"failed: {e}", file=sys.stderr)
        return 1
    print(f"failed: {failure_line(e)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
