"""Ctrl-C / SIGTERM on a command-line entry: one line (where it stopped, what is kept, that the same
command resumes), exit 130 / 143, never a traceback; the same command then resumes with identical rows."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import papermill

from caft_tl.core import files, results
from caft_tl.runner import suite

ROOT = Path(__file__).resolve().parents[2]


def _status_and_line(capsys, work, run_dir="runs/x"):
    status = suite.run_command(work, run_dir)
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return status, err.strip()


def _interrupted_in(where: str, finished: int):
    def work():
        e = KeyboardInterrupt()
        e.where, e.finished = where, finished
        raise e

    return work


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    status, line = _status_and_line(capsys, _interrupted_in("persona_em/seed0/01_plain_finetune", 3))
    assert status == 130
    assert line == (
        "interrupted (SIGINT) during persona_em/seed0/01_plain_finetune: 3 chapter(s) finished "
        "before it; finished work is kept in 'runs/x' and the same command resumes "
        "(an interrupted fine-tune from its last checkpoint)"
    )


def test_sigterm_is_one_line_and_exit_143_and_the_handler_is_restored(capsys):
    before = signal.getsignal(signal.SIGTERM)

    def work():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends

    status, line = _status_and_line(capsys, work)
    assert status == 143 and line.startswith("interrupted (SIGTERM): finished work is kept in 'runs/x'")
    assert signal.getsignal(signal.SIGTERM) == before


def test_ctrl_c_that_reached_the_kernel_first_is_an_interruption(capsys):
    def work():
        raise papermill.PapermillExecutionError(3, 1, "KeyboardInterrupt", "KeyboardInterrupt", "", [])

    status, line = _status_and_line(capsys, work)
    assert status == 130 and line.startswith("interrupted (SIGINT)")


def test_a_failed_write_is_one_failed_line(capsys):
    def work():
        raise files.WriteError("cannot write '/full/results.csv': No space left on device")

    expected = "failed: cannot write '/full/results.csv': No space left on device"
    assert _status_and_line(capsys, work) == (1, expected)


def _suite(run_dir: Path, fig_dir: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "caft_tl.runner.suite",
        "--run-dir",
        str(run_dir),
        "--fig-dir",
        str(fig_dir),
        "--tasks",
        "persona_em",
        "--chapters",
        "00",
        "01",
        "--fast",
        "-p",
        "batch_size",
        "8",
        "-p",
        "n_examples",
        "640",
    ]  # 80 steps: the groups checkpoint at steps 25, 50 and 75, so a Ctrl-C sent once the first
    # checkpoint appears still finds the fine-tune running on a loaded machine (with 40 it once came too late)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints of fine-tunes in progress: a batched group's, or a single run's."""
    finetunes = run_dir / "persona_em" / "seed0" / "finetunes"
    return [*finetunes.glob("group-*.safetensors"), *finetunes.glob("*/checkpoint-*.safetensors")]


def test_ctrl_c_during_a_finetune_then_the_same_command_resumes_with_identical_rows(tmp_path):
    """Ctrl-C as a terminal sends it (to the process group: the suite and its kernel) once a fine-tune
    has checkpointed; then the same command finishes, with the rows of an uninterrupted run."""
    run_dir, fig_dir = tmp_path / "run", tmp_path / "fig"
    proc = _suite(run_dir, fig_dir)
    deadline = time.time() + 400
    while not _checkpoints(run_dir):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no fine-tune checkpoint appeared"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        "interrupted (SIGINT) during persona_em/seed0/01_plain_finetune: 1 chapter(s) finished before it;"
    ), err
    assert _checkpoints(run_dir), "nothing left to resume from"

    again = _suite(run_dir, fig_dir)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    reference = _suite(tmp_path / "ref", tmp_path / "ref_fig")
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err
    resumed = results.read(run_dir / "persona_em" / "seed0" / results.RESULTS_FILE)
    expected = results.read(tmp_path / "ref" / "persona_em" / "seed0" / results.RESULTS_FILE)
    key = list(results.KEY_COLUMNS)
    resumed, expected = (df.sort_values(key).reset_index(drop=True) for df in (resumed, expected))
    assert resumed.equals(expected)
