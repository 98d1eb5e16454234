"""Chapters 09–10's tables over a population (caft_tl.evaluation.population_route_around), on synthetic
run folders: seeds averaged within an organism, then means and t-intervals over the valid organisms
only, missing files counted, and the population figures drawn from the summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from caft_tl.core import files
from caft_tl.core.run_dir import RunDir
from caft_tl.core.stats import RATE_BOUNDS, ci95
from caft_tl.evaluation import population_route_around as pra
from caft_tl.organism import make_task

#: per pre-training seed: the OOD rate of round 2's interpreted arm on fine-tuning seeds 0 and 1
ROUND2 = {0: (0.2, 0.4), 1: (0.5, 0.5), 2: (0.1, 0.3), 3: (0.9, 0.9)}  # seed 3: not valid


def _organism(task_dir: Path, seed: int, skip: tuple[str, ...] = ()) -> str:
    spec = {"task": "persona_em", "task_cfg": {}, "model": {}, "pretrain": {"seed": seed}}
    config = task_dir / f"seed{seed}" / "organism" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"meta": {"spec": spec}}))
    run = RunDir(task_dir / f"seed{seed}")
    iterated = pd.DataFrame(
        [
            {
                "arm": arm,
                "round": r,
                "split": "chat",
                "metric": "misalignment_rate",
                "seed": s,
                "value": v,
                "rank": k,
            }
            for arm in ("interpreted", "random_control")
            for r, k in ((1, 2), (2, 3))
            for s, v in enumerate(ROUND2[seed] if (arm, r) == ("interpreted", 2) else (0.6, 0.6))
        ]
    )
    length = pd.DataFrame(
        [
            {
                "length": m,
                "method": method,
                "split": "chat",
                "metric": "misalignment_rate",
                "seed": s,
                "value": 0.1 * m,
            }
            for m in (1, 2)
            for method in ("plain", "zero")
            for s in (0, 1)
        ]
    )
    leakage = pd.DataFrame(
        [
            {
                "method": "zero",
                "directions": "pca",
                "hook": h,
                "ablated": h == "b0",
                "concept": "misaligned",
                "energy_in_subspace": 0.1 * seed if h == "b0" else float("nan"),
                "concept_shift": 1.0 + seed,
                "recovered_share": 0.5,
            }
            for h in ("b0", "b1")
        ]
    )
    for name, table in (("iterated", iterated), ("training_length", length), ("leakage", leakage)):
        if name not in skip:
            files.write_csv(run.path(name), table)
    return run.organism_id


def test_means_over_seeds_then_over_the_valid_organisms(tmp_path):
    task_dir, fig_dir = tmp_path / "runs", tmp_path / "figures"
    ids = {s: _organism(task_dir, s) for s in ROUND2}
    valid = [ids[s] for s in (0, 1, 2)]
    missing = pra.write(task_dir, fig_dir, valid)
    assert missing == {t.summary: [] for t in pra.TABLES}
    it = files.read_csv(fig_dir / "population_iterated.csv")
    row = it.query("arm == 'interpreted' and round == 2 and quantity == 'value'").iloc[0]
    want = ci95([0.3, 0.5, 0.2], RATE_BOUNDS)  # each organism's mean over its seeds; seed 3 left out
    assert want[1] == 0.0  # a rate's interval is clipped to [0, 1]
    assert (row["mean"], row["low"], row["high"]) == pytest.approx(want)
    assert row["n_organisms"] == 3
    assert it.query("round == 2 and quantity == 'rank'")["mean"].tolist() == [3.0, 3.0]
    leak = files.read_csv(fig_dir / "population_leakage.csv")
    energy = leak.query("quantity == 'energy_in_subspace'")
    assert energy["hook"].tolist() == ["b0"]  # NaN where the set does not ablate: left out
    assert energy["mean"].item() == pytest.approx(0.1)


def test_a_missing_file_is_counted_and_an_empty_population_writes_empty_tables(tmp_path):
    task_dir, fig_dir = tmp_path / "runs", tmp_path / "figures"
    a = _organism(task_dir, 0)
    b = _organism(task_dir, 1, skip=("iterated",))
    missing = pra.write(task_dir, fig_dir, [a, b])
    assert missing["population_iterated.csv"] == [b] and missing["population_leakage.csv"] == []
    pra.write(task_dir, fig_dir, [])
    assert files.read_csv(fig_dir / "population_iterated.csv").empty


def test_a_table_without_its_columns_is_refused_in_one_line():
    with pytest.raises(
        ValueError,
        match=r"the iterated table lacks column\(s\) \['arm', 'split', 'metric', 'value', 'rank'\] "
        r"\(it has \['round'\]\)",
    ):
        pra.organism_means(pd.DataFrame({"round": [1]}), pra.TABLES[1])


def test_the_population_figures_are_drawn_from_the_summaries(tmp_path):
    from caft_tl.plotting import population_figures

    task_dir, fig_dir = tmp_path / "runs", tmp_path / "figures"
    pra.write(task_dir, fig_dir, [_organism(task_dir, s) for s in (0, 1)])
    drawn = population_figures.route_around(fig_dir, make_task("persona_em"))
    assert list(drawn) == list(population_figures.ROUTE_AROUND_NAMES)
    fig, caption = drawn["population_iterated"]
    interpreted = [t for t in fig.data if t.name == "interpreted"][0]
    assert list(interpreted.x) == [1, 2] and interpreted.y[1] == pytest.approx((0.3 + 0.5) / 2)
    assert "2 valid organisms" in str(caption)


def test_the_suite_says_which_valid_organism_lacks_a_chapter_09_10_table(tmp_path, monkeypatch):
    from caft_tl.evaluation import population, population_analyses
    from caft_tl.runner import suite

    task_dir, fig_dir = tmp_path / "runs", tmp_path / "figures"
    ids = [_organism(task_dir, 0), _organism(task_dir, 1, skip=("training_length",))]
    verdicts = pd.DataFrame({"organism": ids, "pretrain_seed": [0, 1], "valid": [True, True]})
    monkeypatch.setattr(population, "write", lambda *_: (verdicts, pd.DataFrame()))
    monkeypatch.setattr(population, "headline", lambda *_: "headline")
    monkeypatch.setattr(
        population_analyses, "write", lambda *_: pd.DataFrame(columns=["file", "organism", "status"])
    )
    line = suite.summarise_population(task_dir, fig_dir, make_task("persona_em"))
    assert (
        line
        == f"headline\n  note: population_training_length.csv: missing for 1 of 2 valid organisms ({ids[1]})"
    )
