"""Batch sweeps: refusal before anything runs, the local process pool, and Ray on a real
two-node local cluster. The runs are the cheapest chapters with tiny budgets (each chapter's
kernel imports transformer_lens, ~15 s)."""

import csv
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from caft_tl.core import files
from caft_tl.core.results import COLUMNS as RESULT_COLUMNS
from caft_tl.runner import sweep

TINY = {"pretrain_steps": 10, "seeds": [0], "n_examples": 64, "fewer_examples": [32]}


def _write(tmp_path, spec, name="grid"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "spec, error, match",
    [
        (
            {"a": {"lr": 1e-3}, "b": {"sedes": [0]}},
            ValueError,
            r"run 'b': unknown parameter 'sedes'; valid: .*seeds",
        ),
        ({"a": {"lr": "fast"}}, TypeError, r"run 'a': parameter 'lr' = 'fast' is str; expected float"),
        (
            {"chapters": ["00"], "a": {}, "b": {"chapters": ["99"]}},
            ValueError,
            r"run 'b': unknown chapter\(s\) \['99'\]",
        ),
        (
            {"chapters": ["00"], "a": {"lr": 1e-3}},
            ValueError,
            r"run 'a': unknown parameter 'lr'",
        ),  # 00 does not declare lr
        (
            {"defaults": {"seed": "0"}, "a": {}},
            TypeError,
            r"defaults: parameter 'seed' = '0' is str; expected int",
        ),
        (
            {"chapters": ["00"], "defaults": {"lr": 1e-3}, "a": {}},
            ValueError,
            r"defaults: unknown parameter 'lr'",
        ),
        (
            {"a": {"resources": {"num_gpu": 1}}},
            ValueError,
            r"unknown resource 'num_gpu'; valid: num_cpus, num_gpus",
        ),
        ({"a/b": {}}, ValueError, r"a run name must be"),
        ({"a": [1, 2]}, ValueError, r"run 'a' must be a mapping"),
        ({"defaults": {"lr": 1e-3}}, ValueError, r"names no parameter set"),
    ],
)
def test_bad_sweep_file_is_refused_before_anything_runs(tmp_path, spec, error, match):
    with pytest.raises(error, match=match):
        sweep.sweep(_write(tmp_path, spec), out=tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()
    assert sweep.main([str(_write(tmp_path, spec)), "--out", str(tmp_path / "runs")]) == 2


def test_yaml_exponent_floats_and_unquoted_chapters(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        "chapters: [00, 01]\nfast: true\nsmall: {lr: 5e-4, resources: {num_cpus: 2, num_gpus: 1}}\n"
    )
    (run,) = sweep.load(path)
    assert run.params == {"lr": 5e-4} and run.chapters == ["00", "01"] and run.fast
    assert (run.num_cpus, run.num_gpus) == (2.0, 1.0)


def test_example_sweep_file_is_valid():
    names = [r.name for r in sweep.load(Path(__file__).parents[1] / "configs" / "sweeps" / "example.yaml")]
    assert len(names) >= 2


def _table(root):
    return list(csv.DictReader(open(root / "results.csv")))


def test_local_sweep_runs_in_parallel_reports_failures_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CAFT_TL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CAFT_TL_FIGURE_FORMATS", "")  # HTML only: no browser start per kernel
    spec = {
        "chapters": ["00", "01"],
        "defaults": TINY,
        "small_lr": {"lr": 5e-4},
        "broken": {"chapters": ["02"]},
    }  # no organism in its run directory: fails in chapter 02
    path = _write(tmp_path, spec)
    results = sweep.sweep(path, out=tmp_path / "runs", workers=2)
    root = tmp_path / "runs" / "grid"
    assert list(results) == ["small_lr", "broken"]
    assert results["small_lr"].ok, results
    assert not results["broken"].ok
    assert results["broken"].error.startswith("02_activation_diffing: MissingArtefactError")
    assert "run 00_organism first" in results["broken"].error and "\n" not in results["broken"].error
    assert "✗ broken: 02_activation_diffing" in capsys.readouterr().err  # reported as it fails
    assert results["small_lr"].node != results["broken"].node  # two pool workers at once
    rows = _table(root)
    assert tuple(rows[0]) == ("run", *RESULT_COLUMNS)
    assert {r["run"] for r in rows} == {"small_lr"} and {"base", "plain"} <= {r["method"] for r in rows}
    provenance = files.read_json(root / "small_lr" / "provenance.json")
    assert provenance["parameters"]["01_plain_finetune"]["lr"] == 5e-4  # the set's parameters reached the run
    status = files.read_json(root / "sweep.json")
    assert status["broken"]["ok"] is False and status["small_lr"]["ok"] is True
    assert (root / "small_lr" / "notebooks" / "01_plain_finetune.ipynb").exists()

    # run again: the finished run is skipped, the failed one is tried again, the table keeps its rows
    log = root / "small_lr" / "sweep.log"
    before = log.stat().st_mtime_ns
    again = sweep.sweep(path, out=tmp_path / "runs", workers=1, progress=False)
    assert log.stat().st_mtime_ns == before and again["small_lr"].ok and not again["broken"].ok
    assert _table(root) == rows


def test_results_table_replaces_a_runs_rows_atomically(tmp_path):
    row = dict(
        task="t",
        organism="t-s0-abc123",
        method="plain",
        directions="none",
        param="",
        trained="True",
        seed="0",
        split="chat",
        metric="m",
        value="0.5",
    )
    path = tmp_path / "results.csv"
    sweep._append_rows(path, "a", [row])
    sweep._append_rows(path, "b", [row, {**row, "seed": "1"}])
    sweep._append_rows(path, "a", [{**row, "value": "0.9"}])
    rows = _table(tmp_path)
    assert [(r["run"], r["value"]) for r in rows] == [("b", "0.5"), ("b", "0.5"), ("a", "0.9")]
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(args: list[str], log: Path, attempts: int = 3, timeout: float = 240) -> subprocess.Popen:
    """``ray start --block`` in its own process group; returns once the node is up. Retried: on a
    busy machine the raylet may give up on its Python agents (a fixed 15 s wait in Ray 2.60)."""
    cmd = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        "1",
        "--include-log-monitor",
        "false",
        *args,
    ]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    for _ in range(attempts):
        proc = subprocess.Popen(
            cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if "Ray runtime started" in log.read_text():
                return proc
            time.sleep(0.5)
        _stop(proc)
    pytest.fail(
        f"could not start a Ray node in {attempts} attempts ({' '.join(cmd)}):\n{log.read_text()[-2000:]}"
    )


def _stop(proc: subprocess.Popen) -> None:
    """Stop a node started by :func:`_ray_start`: its process group, politely then by force."""
    for sig, wait in ((signal.SIGTERM, 8), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # raylet helpers that outlived the CLI
    except ProcessLookupError:
        pass


@pytest.fixture
def ray_cluster(tmp_path):
    """A real Ray cluster on this machine: a head and a second node, one CPU each."""
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    nodes = []
    try:
        nodes.append(
            _ray_start(
                [
                    "--head",
                    "--port",
                    str(port),
                    "--include-dashboard",
                    "false",
                    "--no-monitor",
                    "--dashboard-port",
                    str(_free_port()),
                    "--disable-usage-stats",
                    "--temp-dir",
                    str(temp),
                ],
                tmp_path / "head.log",
            )
        )
        nodes.append(_ray_start(["--address", f"127.0.0.1:{port}"], tmp_path / "worker.log"))
        yield f"127.0.0.1:{port}"
    finally:
        for proc in reversed(nodes):
            _stop(proc)
        subprocess.run(["rm", "-rf", str(temp)], check=False)


def test_ray_backend_runs_each_set_as_a_task_on_a_two_node_cluster(tmp_path, monkeypatch, ray_cluster):
    monkeypatch.setenv("CAFT_TL_CACHE", str(tmp_path / "cache"))  # forwarded to the Ray workers
    monkeypatch.setenv("CAFT_TL_FIGURE_FORMATS", "")
    spec = {
        "chapters": ["00"],
        "resources": {"num_cpus": 1},
        "defaults": {"pretrain_steps": 10},
        "seed0": {"seed": 0},
        "seed1": {"seed": 1},
    }
    results = sweep.sweep(
        _write(tmp_path, spec), out=tmp_path / "runs", backend="ray", ray_address=ray_cluster, progress=False
    )
    assert all(r.ok for r in results.values()), results
    # one CPU per node and one CPU per run: the two runs ran at once, one on each node
    assert len({r.node for r in results.values()}) == 2
    root = tmp_path / "runs" / "grid"
    for name in ("seed0", "seed1"):
        assert (root / name / "organism").is_dir() and (
            root / name / "notebooks" / "00_organism.ipynb"
        ).exists()
    cached = [p for p in (tmp_path / "cache" / "organisms").iterdir() if p.name.startswith("persona_em-")]
    assert len(cached) == 2  # cached where the driver said (beside the cache's checksum marker)
    status = files.read_json(root / "sweep.json")
    assert {s["node"] for s in status.values()} == {r.node for r in results.values()}
