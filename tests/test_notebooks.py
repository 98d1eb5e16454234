"""Papermill smoke run of every chapter with the fast parameter set, and parameter checks."""

import csv
import os
from pathlib import Path

import pytest

from caft_tl.core import files
from caft_tl.organism import TASKS
from caft_tl.runner import parameters, suite


def test_every_chapter_runs_every_task_with_fast_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("CAFT_TL_CACHE", str(tmp_path / "cache"))
    run_dir, fig_dir = tmp_path / "run", tmp_path / "figures"
    tasks = list(TASKS)  # the suite's two and pronoun_profession, two at a time
    timings = suite.run_tasks(tasks, run_dir, fig_dir, fast=True, progress=False, workers=2)
    names = [nb.stem for nb in suite.chapters()]
    assert len(names) == 8 and names[-1] == "07_gates"
    assert list(timings) == ([f"persona_em/{n}" for n in names[:-1]] + [f"double_mc/{n}" for n in names]  # gates: not for persona_em
                             + [f"pronoun_profession/{n}" for n in names])
    for task in suite.TASKS:
        for name in names[:-1]:
            assert (run_dir / task / "notebooks" / f"{name}.ipynb").exists()
    assert (run_dir / "pronoun_profession" / "gates.json").exists()
    rows = list(csv.DictReader(open(fig_dir / "results.csv")))  # every task's rows
    assert {r["task"] for r in rows} == set(tasks)
    assert list(rows[0]) == list(files.RESULT_COLUMNS)
    methods = {(r["task"], r["method"], r["directions"]) for r in rows}
    for task in suite.TASKS:
        for expected in [("base", "none"), ("plain", "none"), ("zero", "pca"), ("zero", "topk_pca"), ("zero", "random"),
                         ("zero", "oracle"), ("zero", "sae"), ("zero", "topk_sae"), ("zero", "random_sae")]:
            assert (task, *expected) in methods
    assert ("persona_em", "fewer_examples", "none") in methods
    assert {r["seed"] for r in rows if r["method"] == "plain"} == {"0", "1"}
    dmc = {(r["method"], r["directions"], r["param"], r["split"]) for r in rows if r["task"] == "double_mc"}
    assert {("plain", "none", "", "ood_spurious_first"), ("zero", "oracle", "", "ood"), ("zero", "oracle", "untrained", "single_spurious"),
            ("zero", "pca", "", "ood")} <= dmc
    assert {r["metric"] for r in rows if r["task"] == "double_mc" and r["method"] == "plain"} == {"accuracy", "coherence"}
    assert set(files.read_json(run_dir / "double_mc" / "gates.json")["gates"]) == {
        "gate1_base", "gate2_plain_learns_spurious", "gate3_oracle", "gate4_pca"}
    for task in suite.TASKS:
        for fig in ["00_base_organism", "01_plain_finetune", "02_sae_quality", "03_sae_concept_scores", "04_sae_latent_check", "05_caft",
                    "06_tradeoff"]:
            assert (fig_dir / task / f"{fig}.html").stat().st_size > 1000
        assert "06_tradeoff" in (fig_dir / task / "README.md").read_text()
    assert (fig_dir / "double_mc" / "07_pca.html").exists()
    provenance = files.read_json(run_dir / "double_mc" / "provenance.json")
    assert provenance["fast"] and provenance["chapters"] == names and provenance["packages"]["papermill"]
    assert provenance["parameters"]["00_organism"] == {"pretrain_steps": 150, "task": "double_mc"}


def test_tasks_are_chosen_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"unknown task 'persona'; valid: persona_em, double_mc"):
        suite.run_tasks(["persona"], tmp_path, tmp_path)
    with pytest.raises(ValueError, match="choose tasks with --tasks"):
        suite.run_tasks(["double_mc"], tmp_path, tmp_path, params={"task": "double_mc"})
    assert [nb.stem[:2] for nb, _ in suite.plan(params={"task": "persona_em"})] == ["00", "01", "02", "03", "04", "05", "06"]
    assert suite.plan(params={"task": "double_mc"})[-1][0].stem == "07_gates"
    assert not list(tmp_path.iterdir())


def test_unknown_parameter_is_refused_before_running(tmp_path):
    with pytest.raises(ValueError, match=r"unknown parameter 'sedes'; valid: .*seeds"):
        suite.run(tmp_path, tmp_path, params={"sedes": [0]})
    assert not (tmp_path / "notebooks").exists()


def test_fast_set_applies_only_where_a_chapter_declares_it(tmp_path):
    steps = suite.plan(only=["01", "06"], fast=True, params={"lr": 5e-4})
    assert [nb.stem for nb, _ in steps] == ["01_plain_finetune", "06_figures"]
    assert steps[0][1] == {"seeds": [0, 1], "n_examples": 320, "fewer_examples": [96], "lr": 5e-4}
    assert steps[1][1] == {}
    with pytest.raises(ValueError, match="unknown parameter 'n_examples'"):
        suite.run(tmp_path, tmp_path, only=["06"], fast=True, params={"n_examples": 10})
    assert not (tmp_path / "notebooks").exists()


def test_ill_typed_parameter_is_refused(tmp_path):
    with pytest.raises(TypeError, match=r"parameter 'lr' = 'fast' is str; expected float"):
        suite.run(tmp_path, tmp_path, params={"lr": "fast"})
    with pytest.raises(ValueError, match="unknown chapter"):
        suite.run(tmp_path, tmp_path, only=["99"])


def test_a_chapter_without_its_upstream_artefacts_names_the_chapter_to_run(tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="run 00_organism first"):
        suite.run(tmp_path / "empty", tmp_path / "figs", only=["02"], progress=False)


def test_a_partial_run_updates_only_its_chapters_timings(tmp_path, monkeypatch):
    monkeypatch.setattr(suite.papermill, "execute_notebook", lambda *a, **k: None)
    files.write_json(tmp_path / "timings.json", {"00_organism": 20.0, "01_plain_finetune": 30.0})
    suite.run(tmp_path, tmp_path / "figures", only=["01"], progress=False)
    timings = files.read_json(tmp_path / "timings.json")
    assert list(timings) == ["00_organism", "01_plain_finetune"]
    assert timings["00_organism"] == 20.0 and timings["01_plain_finetune"] < 30.0


def test_papermill_reads_every_declared_parameter():
    """papermill's own inspector (``papermill --help-notebook``) must see each parameter line;
    a comment holding ``=`` hides a line from it."""
    from papermill.translators import PythonTranslator

    for nb in suite.chapters() + [suite.NOTEBOOK_DIR / "real" / "real_model.ipynb"]:
        seen = {p.name for p in PythonTranslator.inspect({"source": _parameters_source(nb)})}
        assert seen == set(parameters.declared(nb)), nb.name


def _parameters_source(notebook) -> str:
    import nbformat

    cell = next(c for c in nbformat.read(str(notebook), as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    return cell.source


def test_tasks_run_at_once_in_their_own_processes(tmp_path, monkeypatch):
    def fake_execute(nb, out, parameters, **kw):  # records which process ran which task's chapter
        task = Path(parameters["run_dir"]).name
        files.append_results(Path(parameters["run_dir"]) / "results.csv", [dict(zip(files.RESULT_COLUMNS, [
            task, "plain", "none", Path(nb).stem, os.getpid(), "ood", "accuracy", 1.0]))])

    monkeypatch.setattr(suite.papermill, "execute_notebook", fake_execute)
    timings = suite.run_tasks(suite.TASKS, tmp_path / "run", tmp_path / "figures", only=["00", "01"], progress=False, workers=2)
    assert list(timings) == [f"{t}/{c}" for t in suite.TASKS for c in ("00_organism", "01_plain_finetune")]
    call = files.read_json(tmp_path / "run" / "suite.json")
    assert call["tasks"] == list(suite.TASKS) and call["workers"] == 2 and 0 < call["wall_s"] <= call["chapters_s"] + 5
    rows = list(csv.DictReader(open(tmp_path / "figures" / "results.csv")))
    assert {r["task"] for r in rows} == set(suite.TASKS)
    by_task = {t: {r["seed"] for r in rows if r["task"] == t} for t in suite.TASKS}
    assert all(len(p) == 1 for p in by_task.values()) and len(set.union(*by_task.values())) == 2  # one process per task
    assert str(os.getpid()) not in set.union(*by_task.values())
    with pytest.raises(ValueError, match="workers = 0"):
        suite.run_tasks(suite.TASKS, tmp_path, tmp_path, workers=0)
