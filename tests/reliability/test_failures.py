"""A chapter that fails through the suite's command line prints one line (the chapter, the
exception and where the executed notebook with the full traceback is) and exits non-zero."""

import subprocess
import sys

import papermill

from caft_tl.runner import suite


def _suite(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "caft_tl.runner.suite", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_failing_chapter_prints_one_line_naming_the_chapter_and_the_notebook(tmp_path):
    out = _suite(
        "--run-dir",
        tmp_path / "runs",
        "--fig-dir",
        tmp_path / "figs",
        "--tasks",
        "persona_em",
        "--chapters",
        "02",
    )
    assert out.returncode == 1
    notebook = tmp_path / "runs" / "persona_em" / "seed0" / "notebooks" / "02_activation_diffing.ipynb"
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(
        "failed: 02_activation_diffing: MissingArtefactError: missing the organism"
    ), out.stderr
    assert "run 00_organism first" in lines[-1] and lines[-1].endswith(f"(full traceback in {notebook})")
    assert (
        "Traceback" not in out.stderr and "-----" not in out.stderr
    )  # no traceback, neither ours nor papermill's
    assert notebook.exists() and "MissingArtefactError" in notebook.read_text()


def test_failure_line_is_shared_with_the_sweep(tmp_path):
    e = papermill.PapermillExecutionError(3, 3, "x", "ValueError", "first line\nsecond line", ["tb"])
    assert suite.failure_line(e) == "ValueError: first line"
    e.chapter, e.notebook = "05_caft", str(tmp_path / "05_caft.ipynb")
    assert (
        suite.failure_line(e) == "05_caft: ValueError: first line"
    )  # the notebook does not exist: not named
    (tmp_path / "05_caft.ipynb").write_text("{}")
    assert (
        suite.failure_line(e)
        == f"05_caft: ValueError: first line (full traceback in {tmp_path / '05_caft.ipynb'})"
    )


def test_main_prints_one_line_for_a_failing_chapter_in_process(tmp_path, monkeypatch, capsys):
    """The same path as the command line, with papermill's error raised without a kernel (fast lane)."""

    def fail(nb, out, **kw):
        open(out, "w").write("{}")
        raise papermill.PapermillExecutionError(
            2,
            2,
            "src",
            "MissingArtefactError",
            "missing the organism: run 00_organism first",
            ["Traceback", "line"],
        )

    monkeypatch.setattr(suite.papermill, "execute_notebook", fail)
    rc = suite.main(
        [
            "--run-dir",
            str(tmp_path / "runs"),
            "--fig-dir",
            str(tmp_path / "figs"),
            "--tasks",
            "persona_em",
            "--chapters",
            "02",
        ]
    )
    err = capsys.readouterr().err.strip()
    notebook = (
        tmp_path / "runs" / "persona_em" / "seed0" / "notebooks" / "02_activation_diffing.ipynb"
    ).resolve()  # the task's organism
    assert rc == 1
    assert err == (
        f"failed: 02_activation_diffing: MissingArtefactError: missing the organism: run 00_organism first "
        f"(full traceback in {notebook})"
    )


def test_main_refuses_a_bad_parameter_in_one_line(tmp_path, capsys):
    rc = suite.main(
        [
            "--run-dir",
            str(tmp_path / "runs"),
            "--tasks",
            "persona_em",
            "--chapters",
            "01",
            "-p",
            "seeds",
            '["0", "1"]',
        ]
    )
    assert rc == 2
    assert (
        capsys.readouterr().err.strip()
        == "error: parameter 'seeds' = ['0', '1']: element 0 '0' is str; expected int like 0"
    )
    assert not (tmp_path / "runs").exists()
