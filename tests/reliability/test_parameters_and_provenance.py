"""Unknown or ill-typed parameters are refused, inside a notebook too; runs record provenance."""

import platform

import papermill
import pytest

from caft_tl.core import files
from caft_tl.organism import TASKS
from caft_tl.runner import parameters, suite


def _namespace(declared: str, injected: str) -> dict:
    return {"In": ["", declared, injected, "from caft_tl import parameters"]}


def test_check_notebook_refuses_unknown_and_ill_typed():
    declared = 'run_dir = "../runs/default"\nseeds = [0, 1]\nlr = 1e-3\n'
    parameters.check_notebook(
        _namespace(declared, "# Parameters\nseeds = [3]\nlr = 1\n")
    )  # int for float is fine
    with pytest.raises(ValueError, match=r"unknown parameter 'sedes'; valid: lr, run_dir, seeds"):
        parameters.check_notebook(_namespace(declared, "# Parameters\nsedes = [3]\n"))
    with pytest.raises(TypeError, match=r"parameter 'seeds' = 3 is int; expected list like \[0, 1\]"):
        parameters.check_notebook(_namespace(declared, "# Parameters\nseeds = 3\n"))
    parameters.check_notebook({"In": ["", declared, "x = 1"]})  # nothing injected: nothing to check


def test_direct_papermill_run_refuses_an_unknown_parameter(tmp_path):
    nb = suite.NOTEBOOK_DIR / "06_figures.ipynb"
    with pytest.raises(
        papermill.PapermillExecutionError, match=r"unknown parameter 'sedes'; valid: fig_dir, run_dir"
    ):
        papermill.execute_notebook(
            str(nb),
            str(tmp_path / "out.ipynb"),
            parameters={"sedes": 1, "run_dir": str(tmp_path)},
            cwd=str(nb.parent),
            kernel_name="python3",
            progress_bar=False,
        )


def test_every_chapter_declares_its_parameters():
    for nb in suite.chapters():
        declared = parameters.declared(nb)
        assert {"run_dir", "fig_dir"} <= set(declared), nb.name
        task_filled = {"target", "avoid"} | {k for cls, _ in TASKS.values() for k in cls.defaults}
        gaps = {k for k, v in declared.items() if v is None} - task_filled
        assert not gaps, f"{nb.name}: None defaults that no task fills: {gaps}"


def test_provenance_records_versions_commit_and_parameters(tmp_path):
    record = files.write_provenance(tmp_path, {"parameters": {"seeds": [0, 1]}})
    saved = files.read_json(tmp_path / "provenance.json")
    assert saved == record
    assert saved["packages"]["torch"] and saved["packages"]["transformer-lens"].startswith("3.")
    assert saved["parameters"] == {"seeds": [0, 1]} and saved["python"] == platform.python_version()
    assert len(saved["git_commit"] or "x" * 40) == 40


def test_a_non_literal_default_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"parameter 'seeds' = list\(range\(5\)\) is not a literal"):
        parameters._literal_assignments('run_dir = "x"\nseeds = list(range(5))')


def test_a_parameter_the_task_fills_is_still_type_checked():
    defaults = {"seed": None, "hooks": None, "avoid": None}
    parameters.check({"seed": 3, "hooks": ["blocks.0.hook_resid_post"], "avoid": ""}, defaults)
    parameters.check({"seed": None}, defaults)  # None: the task's value
    with pytest.raises(
        TypeError, match=r"parameter 'seed' = '0' is str; expected int like 0 \(None: the task's value\)"
    ):
        parameters.check({"seed": "0"}, defaults)
    with pytest.raises(
        TypeError, match=r"parameter 'hooks' = 'blocks.0.hook_resid_post' is str; expected list"
    ):
        parameters.check({"hooks": "blocks.0.hook_resid_post"}, defaults)


@pytest.mark.parametrize(
    "name, value, error, message",
    [
        (
            "steer_ks",
            [-3, "three"],
            TypeError,
            r"parameter 'steer_ks' = \[-3, 'three'\]: element 1 'three' is str; expected int like -5",
        ),
        (
            "seeds",
            ["0", "1"],
            TypeError,
            r"parameter 'seeds' = \['0', '1'\]: element 0 '0' is str; expected int like 0",
        ),
        (
            "seeds",
            [0, -1],
            ValueError,
            r"parameter 'seeds' = \[0, -1\]: element 1 -1 is negative; seeds are >= 0",
        ),
        (
            "seeds",
            [],
            ValueError,
            r"parameter 'seeds' = \[\] is empty; give at least one value like \[0, 1, 2, 3, 4\]",
        ),
        ("seeds", [True], TypeError, r"element 0 True is bool; expected int"),
        (
            "n_diff_examples",
            0,
            ValueError,
            r"parameter 'n_diff_examples' = 0 is below 1; n_diff_examples counts something",
        ),
        (
            "pretrain_steps",
            -5,
            ValueError,
            r"parameter 'pretrain_steps' = -5 is below 1; pretrain_steps counts something",
        ),
        (
            "fewer_examples",
            [32, 0],
            ValueError,
            r"parameter 'fewer_examples' = \[32, 0\]: element 1 0 is below 1",
        ),
        ("lr", 0.0, ValueError, r"parameter 'lr' = 0.0 is not positive; lr must be > 0"),
        ("lr", float("nan"), ValueError, r"parameter 'lr' = nan is not a finite number"),
        ("batch_size", True, TypeError, r"parameter 'batch_size' = True is bool; expected int like 32"),
    ],
)
def test_list_elements_and_ranges_are_checked(name, value, error, message):
    defaults = {
        "steer_ks": [-5, -3, 3],
        "seeds": [0, 1, 2, 3, 4],
        "n_diff_examples": 1200,
        "pretrain_steps": None,
        "fewer_examples": None,
        "lr": 1e-3,
        "batch_size": 32,
        "add_alphas": [4.0],
        "threshold": 0.2,
    }
    with pytest.raises(error, match=message) as e:
        parameters.check({name: value}, defaults)
    assert "\n" not in str(e.value)
    parameters.check(
        {"add_alphas": [-4, 4.0], "threshold": 0, "seeds": [7]}, defaults
    )  # int where a float is expected


def test_suite_refuses_ill_typed_list_elements_before_anything_runs(tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "caft_tl.runner.suite",
            "--run-dir",
            str(tmp_path / "runs"),
            "--fig-dir",
            str(tmp_path / "fig"),
            "--tasks",
            "persona_em",
            "--chapters",
            "04",
            "-p",
            "steer_ks",
            '[-3, "three"]',
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == "error: parameter 'steer_ks' = [-3, 'three']: element 1 'three' is str; expected int like -5"
    )
    assert not (tmp_path / "runs").exists()


def test_check_notebook_checks_list_elements():
    declared = "seeds = [0, 1]\n"
    with pytest.raises(
        TypeError, match=r"parameter 'seeds' = \['0', '1'\]: element 0 '0' is str; expected int like 0"
    ):
        parameters.check_notebook(_namespace(declared, '# Parameters\nseeds = ["0", "1"]\n'))
