"""Batch runs over a parameter grid: ``python -m caft_tl.runner.sweep configs/sweeps/example.yaml``.

A sweep file is YAML: named parameter sets, optionally with shared ``defaults``, the ``chapters``
to run, ``fast`` (the suite's tiny budgets) and ``resources`` (what each run asks a Ray cluster
for); a set may override ``chapters``, ``fast`` and ``resources`` for itself::

    chapters: ["00", "01"]
    fast: true
    defaults: {seeds: [0]}
    lr_small: {lr: 5.0e-4}
    lr_large: {lr: 2.0e-3, resources: {num_cpus: 2}}

A default applies to the sets whose chapters declare it (and must be declared by one of them).
Every set becomes one run directory ``<out>/<sweep>/<name>`` executed by :func:`caft_tl.runner.suite.run`.
Unknown or ill-typed parameters and unknown chapters of *any* set are refused before anything
runs. As each run finishes its rows of ``results.csv`` are added (atomically) to
``<out>/<sweep>/results.csv`` with a leading ``run`` column, and its status (seconds, node, or the
one-line reason it failed) to ``<out>/<sweep>/sweep.json``; a run recorded as finished with the
same settings is skipped when the sweep is run again.

Backends: ``local`` (default) runs ``--workers`` runs at a time in a process pool; ``ray`` submits
each run as a Ray task with its ``num_cpus`` / ``num_gpus`` request, to the cluster at
``--ray-address`` (or a new local Ray instance).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from caft_tl.core import files
from caft_tl.core.results import COLUMNS as RESULT_COLUMNS
from caft_tl.core.results import check_csv_row, csv_rows
from caft_tl.runner import parameters, suite

#: top-level keys of a sweep file that are not parameter sets
SWEEP_KEYS = ("chapters", "defaults", "fast", "resources")
#: keys of a parameter set that are not notebook parameters
RUN_KEYS = ("chapters", "fast", "resources")
RESOURCE_KEYS = ("num_cpus", "num_gpus")
#: environment variables a run inherits from the process that starts the sweep (also on Ray workers)
FORWARDED_ENV = ("CAFT_TL_CACHE", "CAFT_TL_FIGURE_FORMATS")
BACKENDS = ("local", "ray")


class _Loader(yaml.SafeLoader):
    """YAML with ``5e-4`` read as a float (PyYAML's YAML 1.1 reads it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+.0123456789")
)


@dataclasses.dataclass
class Run:
    """One named parameter set of a sweep."""

    name: str
    params: dict[str, object]
    chapters: list[str] | None = None  # None: every chapter
    fast: bool = False
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclasses.dataclass
class RunResult:
    name: str
    ok: bool
    error: str = ""  # one line: the chapter and the exception, when not ok
    seconds: float = 0.0
    node: str = ""  # host:pid, or the Ray node id
    rows: list[dict] = dataclasses.field(default_factory=list)  # the run's results.csv


def _mapping(value: object, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a mapping, got {type(value).__name__} {value!r}")
    return value


def _resources(value: object, where: str) -> dict[str, float]:
    res = _mapping(value, where)
    for k, v in res.items():
        if k not in RESOURCE_KEYS:
            raise ValueError(f"{where}: unknown resource {k!r}; valid: {', '.join(RESOURCE_KEYS)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{where}: {k} = {v!r}; expected a number >= 0")
    return {k: float(v) for k, v in res.items()}


def _chapters(value: object, where: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError(f"{where}: chapters = {value!r}; expected a list such as ['00', '01']")
    return [str(c).zfill(2) if isinstance(c, int) else str(c) for c in value]


def parse(spec: dict) -> list[Run]:
    """The runs of a parsed sweep file; refuses a bad structure, unknown chapters and unknown or
    ill-typed parameters of any run (via :func:`caft_tl.runner.suite.plan`) before anything runs."""
    spec = _mapping(spec, "a sweep file")
    defaults = _mapping(spec.get("defaults"), "defaults")
    resources = _resources(spec.get("resources"), "resources")
    names = [k for k in spec if k not in SWEEP_KEYS]
    if not names:
        raise ValueError(f"the sweep file names no parameter set (only {', '.join(SWEEP_KEYS)})")
    out, notebooks = [], set()
    for name in names:
        where = f"run {name!r}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(name)):
            raise ValueError(
                f"{where}: a run name must be letters, digits, '_', '.' or '-' (it names a folder)"
            )
        body = _mapping(spec[name], where)
        chapters = _chapters(body.get("chapters", spec.get("chapters")), where)
        own = {k: v for k, v in body.items() if k not in RUN_KEYS}
        try:
            steps = suite.plan(chapters, own)
        except (ValueError, TypeError) as e:
            raise type(e)(f"{where}: {e}") from None
        declared = {k for nb, _ in steps for k in parameters.declared(nb)}
        notebooks |= {nb for nb, _ in steps}
        res = {**resources, **_resources(body.get("resources"), f"{where} resources")}
        params = {
            **{k: v for k, v in defaults.items() if k in declared},
            **own,
        }  # defaults apply where declared
        fast = body.get("fast", spec.get("fast", False))
        if not isinstance(fast, bool):
            raise ValueError(f"{where}: fast = {fast!r}; expected true or false")
        out.append(Run(str(name), params, chapters, fast, res.get("num_cpus", 1.0), res.get("num_gpus", 0.0)))
    try:
        suite.check_parameters(defaults, sorted(notebooks))
    except (ValueError, TypeError) as e:
        raise type(e)(f"defaults: {e}") from None
    return out


def load(path: str | os.PathLike) -> list[Run]:
    """Read and check a sweep file (see :func:`parse`)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no sweep file {str(path)!r}; e.g. configs/sweeps/example.yaml")
    try:
        spec = yaml.load(Path(path).read_bytes().decode("utf-8"), Loader=_Loader)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); save the sweep file as UTF-8") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid YAML (nested too deeply)") from None
    try:
        return parse(spec)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{path}: {e}") from None


def _node() -> str:
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    return f"{socket.gethostname()}:{os.getpid()}"


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr, and its children's (the kernels'), to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def execute(run: Run, run_dir: str, env: dict[str, str]) -> RunResult:
    """Run one parameter set's chapters into ``run_dir`` (figures in ``run_dir/figures``, the
    chapters' output in ``run_dir/sweep.log``); never raises for a failing chapter."""
    os.environ.update(env)
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    error = ""
    with _output_to(path / "sweep.log"):
        try:
            suite.run(path, path / "figures", run.chapters, run.params, run.fast, progress=False)
        except Exception as e:
            error = suite.failure_line(e, path)
    results = path / "results.csv"
    try:
        rows = _table_rows(results, RESULT_COLUMNS) if results.exists() else []
    except ValueError as e:  # a corrupted table is this run's failure, reported in its one line
        rows, error = [], error or str(e)
    return RunResult(run.name, not error, error, round(time.perf_counter() - t0, 1), _node(), rows)


def _local(todo: list[tuple[Run, str]], env: dict[str, str], workers: int) -> Iterator[RunResult]:
    # the workers ignore Ctrl-C: on Ctrl-C or SIGTERM the sweep stops them itself, at once (an interrupted
    # fine-tune resumes from its checkpoint), rather than waiting for their runs or printing their tracebacks
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=signal.signal,
        initargs=(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        futures = {pool.submit(execute, run, run_dir, env): run for run, run_dir in todo}
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as e:  # the worker process itself died
                yield RunResult(futures[future].name, False, f"{type(e).__name__}: {e}")
    except BaseException:  # interrupted (or the caller stopped reading)
        for proc in list((pool._processes or {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _ray(todo: list[tuple[Run, str]], env: dict[str, str], address: str | None) -> Iterator[RunResult]:
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=False, **({} if address else {"include_dashboard": False}))
    try:
        task = ray.remote(execute)
        refs = {
            task.options(
                num_cpus=run.num_cpus, num_gpus=run.num_gpus, max_retries=0, name=f"caft-tl {run.name}"
            ).remote(run, run_dir, env): run
            for run, run_dir in todo
        }
        while refs:
            (ref,), _ = ray.wait(list(refs), num_returns=1)
            run = refs.pop(ref)
            try:
                yield ray.get(ref)
            except Exception as e:  # the task or its node died
                yield RunResult(run.name, False, f"{type(e).__name__}: {str(e).splitlines()[0]}")
    finally:
        if started:
            ray.shutdown()


def _table_rows(path: Path, columns: tuple[str, ...]) -> list[dict]:
    """The rows of a results table whose columns are ``columns`` (the results columns, after
    ``run`` in a sweep's table), each checked (:func:`caft_tl.core.results.check_csv_row`)."""
    out = []
    for line, row in csv_rows(path):
        if len(row) != len(columns):
            raise ValueError(
                f"{path}:{line}: {len(row)} fields, expected {len(columns)} ({', '.join(columns)})"
            )
        check_csv_row(row[len(columns) - len(RESULT_COLUMNS) :], f"{path}:{line}: ")
        out.append(dict(zip(columns, row)))
    return out


def _append_rows(path: Path, run: str, rows: list[dict]) -> None:
    """Replace ``run``'s rows of the sweep table (``run`` + the results columns), atomically."""
    columns = ("run", *RESULT_COLUMNS)
    kept = [r for r in _table_rows(path, columns) if r["run"] != run] if path.exists() else []
    with files.atomic_write(path) as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(kept + [{"run": run, **r} for r in rows])


def sweep(
    path: str | os.PathLike,
    out: str | os.PathLike = "runs",
    name: str | None = None,
    backend: str = "local",
    workers: int = 2,
    ray_address: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, RunResult]:
    """Run every parameter set of the sweep file ``path``; returns each run's result (also those
    skipped as already finished). Everything is checked before the first run starts."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if workers < 1:
        raise ValueError(f"workers = {workers}; expected at least 1")
    all_runs = load(path)
    root = Path(out).resolve() / (name or Path(path).stem)
    status_path, table = root / "sweep.json", root / "results.csv"
    status = files.read_json(status_path) if status_path.exists() else {}
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    results: dict[str, RunResult] = {}
    todo = []
    for run in all_runs:
        key = files.config_hash(run)
        if not force and status.get(run.name, {}).get("ok") and status[run.name].get("config") == key:
            results[run.name] = RunResult(
                run.name, True, "", status[run.name]["seconds"], status[run.name]["node"]
            )
        else:
            todo.append((run, str(root / run.name)))
    root.mkdir(parents=True, exist_ok=True)
    by_name = {run.name: run for run in all_runs}
    done = _local(todo, env, workers) if backend == "local" else _ray(todo, env, ray_address)
    bar = tqdm(
        total=len(all_runs), initial=len(results), desc=f"sweep {root.name}", unit="run", disable=not progress
    )
    try:
        _collect(done, results, by_name, status, status_path, table, root, bar)
    except KeyboardInterrupt as e:
        e.where, e.unit = f"sweep {root.name}", f"of {len(all_runs)} runs"
        e.finished = sum(r.ok for r in results.values())
        raise
    finally:
        done.close()
        bar.close()
    return {run.name: results[run.name] for run in all_runs}


def _collect(
    done: Iterator[RunResult],
    results: dict,
    by_name: dict,
    status: dict,
    status_path: Path,
    table: Path,
    root: Path,
    bar,
) -> None:
    """Record each run's result as it finishes: its rows in the sweep's table, its status in sweep.json."""
    for result in done:
        results[result.name] = result
        _append_rows(table, result.name, result.rows)
        status[result.name] = {
            "ok": result.ok,
            "error": result.error,
            "seconds": result.seconds,
            "node": result.node,
            "config": files.config_hash(by_name[result.name]),
            "run_dir": str(root / result.name),
        }
        files.write_json(status_path, status)
        bar.update()
        bar.set_postfix(failed=sum(not r.ok for r in results.values()))
        if not result.ok:
            tqdm.write(f"✗ {result.name}: {result.error}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_file", help="YAML file of named parameter sets (configs/sweeps/example.yaml)")
    ap.add_argument("--out", default="runs", help="parent of the sweep's folder (default: runs)")
    ap.add_argument("--name", help="the sweep's folder name (default: the file's stem)")
    ap.add_argument("--backend", default="local", choices=BACKENDS)
    ap.add_argument("--workers", type=int, default=2, help="runs at a time with the local backend")
    ap.add_argument(
        "--ray-address",
        help="an existing Ray cluster (e.g. 10.0.0.1:6379 or auto); default: start a local one",
    )
    ap.add_argument("--force", action="store_true", help="re-run the runs already finished")
    args = ap.parse_args(argv)
    root = Path(args.out) / (args.name or Path(args.sweep_file).stem)
    out: dict[str, RunResult] = {}

    def work() -> None:
        out.update(
            sweep(
                args.sweep_file, args.out, args.name, args.backend, args.workers, args.ray_address, args.force
            )
        )

    status = suite.run_command(work, root)
    if status:
        return status
    failed = [r for r in out.values() if not r.ok]
    print(
        f"{len(out) - len(failed)} of {len(out)} runs finished; table {root / 'results.csv'}, "
        f"status {root / 'sweep.json'}"
    )
    for r in failed:
        print(f"failed: {r.name}: {r.error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
