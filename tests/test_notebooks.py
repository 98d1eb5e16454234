"""Papermill smoke run of every chapter with the fast parameter set, and parameter checks."""

import csv
import os

import pytest

from caft_tl import runs, suite


def test_every_chapter_runs_with_fast_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("CAFT_TL_CACHE", str(tmp_path / "cache"))
    run_dir, fig_dir = tmp_path / "run", tmp_path / "figures"
    timings = suite.run(run_dir, fig_dir, fast=True, progress=False)
    names = [nb.stem for nb in suite.chapters()]
    assert list(timings) == names and len(names) == 8
    for name in names:
        assert (run_dir / "notebooks" / f"{name}.ipynb").exists()
    rows = list(csv.DictReader(open(fig_dir / "results.csv")))
    assert list(rows[0]) == list(runs.RESULT_COLUMNS)
    methods = {(r["method"], r["directions"]) for r in rows}
    for expected in [("base", "none"), ("plain", "none"), ("fewer_examples", "none"), ("zero", "pca"),
                     ("zero", "topk_pca"), ("zero", "random"), ("zero", "oracle"), ("zero", "sae"), ("zero", "topk_sae"),
                     ("zero", "random_sae")]:
        assert expected in methods
    assert {r["seed"] for r in rows if r["method"] == "plain"} == {"0", "1"}
    dmc = {(r["method"], r["directions"], r["split"]) for r in rows if r["task"] == "double_mc"}  # chapter 07
    assert {("plain", "none", "ood_spurious_first"), ("zero", "oracle", "ood"), ("zero", "random", "ood")} <= dmc
    assert set(runs.read_json(run_dir / "double_mc" / "gates.json")["gates"]) == {
        "gate1_base", "gate2_plain_learns_spurious", "gate3_oracle", "gate4_pca"}
    for fig in ["01_plain_finetune", "02_sae_quality", "03_sae_concept_scores", "04_sae_latent_check", "05_caft", "06_tradeoff"]:
        assert (fig_dir / f"{fig}.html").stat().st_size > 1000
    assert "06_tradeoff" in (fig_dir / "README.md").read_text()
    assert (fig_dir / "plotly.min.js").stat().st_size > 1_000_000
    provenance = runs.read_json(run_dir / "provenance.json")
    assert provenance["fast"] and provenance["chapters"] == names and provenance["packages"]["papermill"]
    assert provenance["parameters"]["00_organism"] == {"pretrain_steps": 150}


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
    runs.write_json(tmp_path / "timings.json", {"00_organism": 20.0, "01_plain_finetune": 30.0})
    suite.run(tmp_path, tmp_path / "figures", only=["01"], progress=False)
    timings = runs.read_json(tmp_path / "timings.json")
    assert list(timings) == ["00_organism", "01_plain_finetune"]
    assert timings["00_organism"] == 20.0 and timings["01_plain_finetune"] < 30.0
