"""Chapters 05–06's per-organism analyses over a population (``caft_tl.evaluation.population_analyses``),
on synthetic run and figure folders: means and intervals over the valid organisms only, missing
files reported, bad files refused in one line, and the results tables' block."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from caft_tl.core import files
from caft_tl.core.run_dir import RunDir
from caft_tl.core.stats import bootstrap_ci95, ci95
from caft_tl.evaluation import population
from caft_tl.evaluation import population_analyses as pa
from caft_tl.organism import make_task

#: per pre-training seed: null percentile of zero · pca, reduction factor and excess of zero · pca,
#: above_curve of zero · pca
NUMBERS = {
    0: (90.0, 4.0, 0.05, -0.20),
    1: (100.0, 2.0, 0.10, -0.10),
    2: (70.0, 3.0, 0.08, -0.30),
    3: (5.0, 0.5, 0.40, 0.50),
}  # seed 3: the invalid organism
VALID_SEEDS = [0, 1, 2]


def _organism(
    task_dir: Path, fig_dir: Path, task: str, seed: int, numbers=None, skip: tuple[str, ...] = ()
) -> str:
    """One organism: its run directory (chapter 00's config) and its figure folder with the three analyses;
    its id."""
    spec = {"task": task, "task_cfg": {}, "model": {}, "pretrain": {"seed": seed}}
    config = task_dir / f"seed{seed}" / "organism" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"meta": {"spec": spec}}))
    null, factor, excess, above = numbers or NUMBERS[seed]
    folder = fig_dir / f"seed{seed}"
    tables = {
        pa.NULL_FILE: pd.DataFrame(
            {
                "directions": ["pca", "topk_pca"],
                "mean": [0.3, 0.6],
                "null_percentile": [null, 50.0],
                "null_draws": [20, 20 + seed],
            }
        ),
        pa.REDUCTION_FILE: pd.DataFrame(
            {
                "method": ["plain", "zero"],
                "directions": ["none", "pca"],
                "param": ["", ""],
                "mean": [0.9, 0.3],
                "excess": [0.5, excess],
                "reduction_factor": [1.0, factor],
            }
        ),
        pa.CURVE_FILE: pd.DataFrame(
            {
                "method": ["zero", "zero", "mean"],
                "directions": ["pca", "random/0", "pca"],
                "param": ["", "", ""],
                "x": [0.8, 0.8, 0.9],
                "y": [0.3, 0.5, 0.95],
                "curve_y": [0.5, 0.5, np.nan],
                "above_curve": [above, 0.0, np.nan],
                "above_curve_low": [above - 0.1, -0.1, np.nan],
                "above_curve_high": [above + 0.1, 0.1, np.nan],
            }
        ),
    }
    for name, table in tables.items():
        if name not in skip:
            files.write_csv(folder / name, table)
    return RunDir(task_dir / f"seed{seed}").organism_id


@pytest.fixture
def persona(tmp_path):
    """A persona_em population of four organisms, seed 3 not valid: (task_dir, fig_dir, valid ids,
    invalid id)."""
    task_dir, fig_dir = tmp_path / "runs" / "persona_em", tmp_path / "figures" / "persona_em"
    ids = {s: _organism(task_dir, fig_dir, "persona_em", s) for s in NUMBERS}
    return task_dir, fig_dir, [ids[s] for s in VALID_SEEDS], ids[3]


def _row(df: pd.DataFrame, method: str, directions: str) -> pd.Series:
    return df[(df["method"] == method) & (df["directions"] == directions)].iloc[0]


def test_means_and_t_intervals_are_over_the_valid_organisms_only(persona):
    task_dir, fig_dir, valid, invalid = persona
    coverage = pa.write(task_dir, fig_dir, make_task("persona_em"), valid)
    assert (
        set(coverage["organism"]) == set(valid)
        and set(coverage["status"]) == {pa.READ}
        and pa.notes(coverage) == []
    )

    null = pa.read_summary(fig_dir / pa.NULL_SUMMARY_FILE)
    pca = _row(null, "zero", "pca")
    percentiles = [NUMBERS[s][0] for s in VALID_SEEDS]
    m, lo, hi = ci95(percentiles)
    assert (
        (pca["mean"], pca["low"]) == pytest.approx((m, lo)) and hi > 100 and pca["high"] == 100.0
    )  # clipped to the percentile's range
    assert pca["n_organisms"] == 3 and pca["null_draws"] == 20 and pca["percentiles"] == "90; 100; 70"
    assert pca["organisms"].split("; ") == valid and invalid not in pca["organisms"]
    assert (
        _row(null, "zero", "topk_pca")["mean"] == pytest.approx(50.0)
        and _row(null, "zero", "topk_pca")["low"] == 50.0
    )  # no spread

    red = pa.read_summary(fig_dir / pa.REDUCTION_SUMMARY_FILE)
    zero = _row(red, "zero", "pca")
    assert tuple(zero[["mean", "low", "high"]]) == pytest.approx(ci95([NUMBERS[s][1] for s in VALID_SEEDS]))
    assert tuple(zero[["excess_mean", "excess_low", "excess_high"]]) == pytest.approx(
        ci95([NUMBERS[s][2] for s in VALID_SEEDS])
    )
    assert zero["n_organisms"] == 3 and zero["n_infinite"] == 0 and _row(red, "plain", "none")["mean"] == 1.0


def test_the_distance_from_the_curve_is_bootstrapped_over_organisms(persona):
    task_dir, fig_dir, valid, _ = persona
    pa.write(task_dir, fig_dir, make_task("persona_em"), valid, n_boot=500)
    curve = pa.read_summary(fig_dir / pa.CURVE_SUMMARY_FILE)
    pca = _row(curve, "zero", "pca")
    above = [NUMBERS[s][3] for s in VALID_SEEDS]
    assert tuple(pca[["mean", "low", "high"]]) == pytest.approx(bootstrap_ci95(above, 500))
    assert pca["mean"] == pytest.approx(-0.2) and min(above) <= pca["low"] < pca["mean"] < pca["high"] <= max(
        above
    )  # resamples the three organisms
    assert (
        pca["n_organisms"] == 3
        and pca["n_outside"] == 0
        and pca["within_organism_width"] == pytest.approx(0.2)
    )
    outside = _row(curve, "mean", "pca")  # beyond the curve on every organism: no distance, counted
    assert np.isnan(outside["mean"]) and outside["n_organisms"] == 0 and outside["n_outside"] == 3
    assert "random/0" in set(
        curve["directions"]
    )  # the null's draws are kept in the file (the table leaves them out)


def test_an_infinite_reduction_factor_has_no_interval_but_its_excess_does(tmp_path):
    task_dir, fig_dir = tmp_path / "runs", tmp_path / "figures"
    valid = [
        _organism(task_dir, fig_dir, "persona_em", 0),
        _organism(task_dir, fig_dir, "persona_em", 1, (90.0, np.inf, -0.01, 0.0)),
    ]
    pa.write(task_dir, fig_dir, make_task("persona_em"), valid)
    zero = _row(pa.read_summary(fig_dir / pa.REDUCTION_SUMMARY_FILE), "zero", "pca")
    assert (
        zero["mean"] == np.inf
        and np.isnan(zero["low"])
        and np.isnan(zero["high"])
        and zero["n_infinite"] == 1
    )
    assert tuple(zero[["excess_mean", "excess_low", "excess_high"]]) == pytest.approx(ci95([0.05, -0.01]))


def test_missing_files_are_reported_not_raised(tmp_path):
    task_dir, fig_dir = tmp_path / "runs" / "persona_em", tmp_path / "figures" / "persona_em"
    ids = [
        _organism(task_dir, fig_dir, "persona_em", 0),
        _organism(task_dir, fig_dir, "persona_em", 1, skip=(pa.CURVE_FILE,)),
    ]
    coverage = pa.write(task_dir, fig_dir, make_task("persona_em"), ids).set_index(["file", "organism"])[
        "status"
    ]
    assert coverage[(pa.CURVE_FILE, ids[1])] == pa.MISSING and coverage[(pa.CURVE_FILE, ids[0])] == pa.READ
    assert (
        _row(pa.read_summary(fig_dir / pa.CURVE_SUMMARY_FILE), "zero", "pca")["n_organisms"] == 1
    )  # the organism that has it
    assert pa.notes(coverage.reset_index()) == [
        f"{pa.CURVE_FILE}: missing for 1 of 2 valid organisms ({ids[1]})"
    ]

    dmc_dir, dmc_fig = tmp_path / "runs" / "double_mc", tmp_path / "figures" / "double_mc"
    dmc = [
        _organism(dmc_dir, dmc_fig, "double_mc", 0, skip=(pa.REDUCTION_FILE,))
    ]  # no EM metric: chapter 05 writes no reduction factor
    coverage = pa.write(dmc_dir, dmc_fig, make_task("double_mc"), dmc)
    assert set(coverage.loc[coverage["file"] == pa.REDUCTION_FILE, "status"]) == {pa.NOT_WRITTEN}
    assert pa.read_summary(
        dmc_fig / pa.REDUCTION_SUMMARY_FILE
    ).empty  # written empty: no older summary is left behind
    assert pa.notes(coverage) == [f"{pa.REDUCTION_FILE}: {pa.NOT_WRITTEN}"]
    assert pa.write(
        dmc_dir, dmc_fig, make_task("double_mc"), []
    ).empty  # no valid organism: nothing read, nothing raised
    assert pa.read_summary(dmc_fig / pa.NULL_SUMMARY_FILE).empty


def test_bad_files_and_unknown_organisms_are_refused_in_one_line(persona):
    task_dir, fig_dir, valid, _ = persona
    task = make_task("persona_em")
    null = fig_dir / "seed0" / pa.NULL_FILE
    cases = [
        ("directions,mean,null_draws\npca,0.3,20\n", ValueError, r"lacks column\(s\) \['null_percentile'\]"),
        (
            "directions,mean,null_percentile,null_draws\npca,0.3,high,20\n",
            files.CorruptFileError,
            "could not convert string to float",
        ),
        (
            "directions,mean,null_percentile,null_draws\npca,0.3,90,20\npca,0.3,80,20\n",
            ValueError,
            r"repeats configuration\(s\) \[\['pca'\]\]",
        ),
        ("", files.CorruptFileError, "cannot read"),
    ]
    for text, error, match in cases:
        null.write_text(text)
        with pytest.raises(error, match=match) as e:
            pa.write(task_dir, fig_dir, task, valid)
        assert "\n" not in str(e.value) and str(null) in str(e.value)
    with pytest.raises(
        ValueError, match=r"valid organism\(s\) \['persona_em-s9-abcdef'\] have no run directory"
    ):
        pa.write(task_dir, fig_dir, task, ["persona_em-s9-abcdef"])


def test_the_suite_writes_the_analyses_after_the_population_and_says_what_is_missing(tmp_path, monkeypatch):
    from caft_tl.runner import suite

    task_dir, fig_dir = tmp_path / "runs" / "persona_em", tmp_path / "figures" / "persona_em"
    ids = [
        _organism(task_dir, fig_dir, "persona_em", 0),
        _organism(task_dir, fig_dir, "persona_em", 3, skip=(pa.NULL_FILE,)),
    ]
    verdicts = pd.DataFrame({"organism": ids, "pretrain_seed": [0, 3], "valid": [True, False]})
    monkeypatch.setattr(population, "write", lambda *_: (verdicts, pd.DataFrame()))
    monkeypatch.setattr(population, "headline", lambda *_: "headline")
    from caft_tl.evaluation import population_route_around  # chapters 09–10's: tests of their own

    monkeypatch.setattr(population_route_around, "write", lambda *_: {})
    assert (
        suite.summarise_population(task_dir, fig_dir, make_task("persona_em")) == "headline"
    )  # the invalid organism's missing file: not read
    assert set(pd.read_csv(fig_dir / pa.COVERAGE_FILE)["organism"]) == {ids[0]}
    (fig_dir / "seed0" / pa.CURVE_FILE).unlink()
    line = suite.summarise_population(task_dir, fig_dir, make_task("persona_em"))
    assert line == f"headline\n  note: {pa.CURVE_FILE}: missing for 1 of 1 valid organisms ({ids[0]})"


def _tables():
    spec = importlib.util.spec_from_file_location(
        "results_tables", Path(__file__).parents[1] / "scripts" / "results_tables.py"
    )
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    return tables


def _population_files(fig_dir: Path, task: str, ids: list[str]) -> None:
    """The suite's validity (every organism valid) and a one-row summary, which the tables need besides the
    analyses."""
    pd.DataFrame({"organism": ids, "pretrain_seed": range(len(ids)), "valid": True}).to_csv(
        fig_dir / population.VALIDITY_FILE, index=False
    )
    pd.DataFrame(
        [
            {
                "task": task,
                "method": "plain",
                "directions": "none",
                "param": "",
                "trained": True,
                "split": make_task(task).ood_split,
                "metric": make_task(task).metric(make_task(task).ood_split),
                "mean": 0.1,
                "low": 0.0,
                "high": 0.2,
                "n_organisms": len(ids),
                "within_organism_seed_sd": 0.01,
            }
        ]
    ).to_csv(fig_dir / population.SUMMARY_FILE, index=False)


def test_the_results_tables_show_the_analyses_and_what_is_missing(tmp_path):
    tables = _tables()
    task_dir, fig_dir = tmp_path / "runs" / "double_mc", tmp_path / "figures" / "double_mc"
    ids = [
        _organism(
            task_dir,
            fig_dir,
            "double_mc",
            s,
            skip=(pa.REDUCTION_FILE,) + ((pa.CURVE_FILE,) if s == 1 else ()),
        )
        for s in (0, 1)
    ]
    _population_files(fig_dir, "double_mc", ids)
    text = tables.task_tables(fig_dir)
    assert f"No {pa.COVERAGE_FILE}" in text  # a figure folder from before the analyses were summarised

    pa.write(task_dir, fig_dir, make_task("double_mc"), ids)
    text = tables.task_tables(fig_dir)
    assert (
        "| configuration | null percentile | above the fewer-examples curve |" in text
    )  # no EM reduction factor column on double_mc
    assert "| zero · pca | 95 [31, 100] (n=2: 90; 100) | -0.20 [-0.20, -0.20] (n=1) |" in text
    assert "| mean · pca |  | outside the curve on all 1 |" in text and "random/0" not in text
    assert (
        f"- {pa.REDUCTION_FILE}: {pa.NOT_WRITTEN}" in text
        and f"- {pa.CURVE_FILE}: missing for 1 of 2 valid organisms ({ids[1]})" in text
    )

    em_dir, em_fig = tmp_path / "runs" / "persona_em", tmp_path / "figures" / "persona_em"
    ids = [
        _organism(em_dir, em_fig, "persona_em", 0),
        _organism(em_dir, em_fig, "persona_em", 1, (90.0, np.inf, -0.01, 0.0)),
    ]
    _population_files(em_fig, "persona_em", ids)
    pa.write(em_dir, em_fig, make_task("persona_em"), ids)
    text = tables.task_tables(em_fig)
    assert (
        "| configuration | null percentile | EM reduction factor | above the fewer-examples curve |" in text
    )
    assert (
        "| zero · pca | 90 [90, 90] (n=2: 90; 90) | ∞ on 1 of 2 (at or below base); "
        "excess +0.02 [-0.36, +0.40] |" in text
    )
    assert (
        "| plain |  | 1.00 [1.00, 1.00] (n=2); excess +0.50 [+0.50, +0.50] |  |" in text
        and "missing" not in text
        and "not written" not in text
    )


def test_the_results_tables_name_every_commit_the_organisms_ran_at(tmp_path):
    import json

    tables = _tables()
    for folder, commit, dirty in [
        ("b/seed0", "bbbbbbb111", False),
        ("a/seed0", "aaaaaaa222", True),
        ("a/seed1", "aaaaaaa222", True),
    ]:
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "provenance.json").write_text(
            json.dumps({"git_commit": commit, "git_dirty": dirty})
        )
    assert tables.recorded_commits(tmp_path) == ["aaaaaaa+uncommitted", "bbbbbbb"]


def test_the_results_table_shows_the_excess_beside_every_reduction_factor():
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location(
        "results_tables", Path(__file__).resolve().parents[1] / "scripts" / "results_tables.py"
    )
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    row = dict(
        mean=1493.9,
        low=-13453.87,
        high=16441.67,
        n_organisms=2,
        n_infinite=0,
        excess_mean=0.0004,
        excess_low=-0.02,
        excess_high=0.03,
    )
    assert (
        tables.reduction_cell(SimpleNamespace(**row))
        == "1493.90 [-13453.87, 16441.67] (n=2); excess +0.00 [-0.02, +0.03]"
    )
    row.update(mean=np.inf, n_infinite=1, excess_mean=-0.01)
    assert (
        tables.reduction_cell(SimpleNamespace(**row))
        == "∞ on 1 of 2 (at or below base); excess -0.01 [-0.02, +0.03]"
    )


def test_the_results_tables_join_several_runs_each_under_its_design(tmp_path, capsys):
    """The study's tables: one document from several figure folders (the tasks, a topic pair), each
    task headed by the design its run's suite call passed; the named README block is replaced; a
    run folder count that does not match the figure folders is refused in one line."""
    tables = _tables()
    args = []
    for name, cfg in [("study", {}), ("pair", {"intended": "sports", "spurious": "weather"})]:
        task_dir, fig_dir = tmp_path / "runs" / name / "double_mc", tmp_path / "figures" / name / "double_mc"
        ids = [_organism(task_dir, fig_dir, "double_mc", s) for s in (0, 1)]
        _population_files(fig_dir, "double_mc", ids)
        files.write_json(
            task_dir.parent / "suite.json",
            {"tasks": ["double_mc"], "task_cfg": cfg, "organisms": 2, "workers": 2, "wall_s": 9.0},
        )
        args.append((fig_dir.parent, task_dir.parent))
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n<!-- study:begin -->\nSTALE\n<!-- study:end -->\n"
        "<!-- results:begin -->\nkept\n<!-- results:end -->\n"
    )
    argv = [str(f) for f, _ in args] + ["--run-dir"] + [str(r) for _, r in args]
    assert (
        tables.main(argv + ["--out", str(tmp_path / "T.md"), "--readme", str(readme), "--block", "study"])
        == 0
    )
    text = (tmp_path / "T.md").read_text()
    assert (
        text.count("Generated by `scripts/results_tables.py`") == 2
        and "### `double_mc`: 2 organisms, 2 valid (100%)" in text
    )
    assert "### `double_mc` (intended=sports, spurious=weather): 2 organisms, 2 valid (100%)" in text
    assert "STALE" not in readme.read_text() and "kept" in readme.read_text() and text in readme.read_text()
    assert (
        tables.main(
            [str(f) for f, _ in args] + ["--run-dir", str(args[0][1]), "--out", str(tmp_path / "U.md")]
        )
        == 2
    )
    assert "1 --run-dir for 2 figure folders" in capsys.readouterr().err and not (tmp_path / "U.md").exists()
