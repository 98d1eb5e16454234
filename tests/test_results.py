"""The results schema and the run directory: one schema for every writer and reader."""

import csv
import re

import pandas as pd
import pytest

from caft_tl.core import files, results
from caft_tl.core.run_dir import ARTEFACTS, RunDir


def _rows(**kw):
    key = results.RowKey(**{"task": "t", "organism": "t-s0-abcdef", "method": "plain", **kw})
    return results.rows(key, {"chat": {"m": 0.5}})


def test_append_replaces_the_same_key_keeps_column_order_and_exact_values(tmp_path):
    path = tmp_path / "results.csv"
    results.append(path, _rows() + _rows(seed=1))
    results.append(path, [{**_rows()[0], "value": 0.1 + 0.2}])
    rows = list(csv.DictReader(open(path)))
    assert tuple(rows[0]) == results.COLUMNS
    assert len(rows) == 2 and float(rows[0]["value"]) == 0.1 + 0.2  # bit-exact through the file
    assert results.read(path)["value"].iloc[0] == 0.1 + 0.2
    with pytest.raises(ValueError, match="expected exactly"):
        results.append(path, [{"task": "t"}])


def test_trained_is_a_boolean_column_not_a_prefix_of_param(tmp_path):
    path = tmp_path / "results.csv"
    results.append(
        path, _rows(method="zero", param="k=-3", trained=False) + _rows(method="zero", param="k=-3")
    )
    df = results.read(path)
    assert df["trained"].dtype == bool and sorted(df["trained"]) == [False, True]
    assert set(df["param"]) == {"k=-3"}  # the setting only
    assert len(results.select(df, method="zero", trained=False)) == 1
    with pytest.raises(TypeError, match="trained = 'no'"):
        results.RowKey("t", "o", "zero", trained="no")


def test_an_old_format_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text(
        "task,method,directions,param,seed,split,metric,value\npersona_em,plain,none,,0,chat,m,0.5\n"
    )
    for action in (lambda: results.read(path), lambda: results.append(path, _rows())):
        with pytest.raises(
            results.OldResultsFormatError, match=r"missing \['organism', 'trained'\].*re-run the chapters"
        ) as e:
            action()
        assert "\n" not in str(e.value)


def test_select_and_require_name_the_chapter_that_writes_missing_rows():
    df = pd.DataFrame(_rows(method="base", trained=False) + _rows())
    assert len(results.select(df, method=["base", "plain"])) == 2
    with pytest.raises(ValueError, match="unknown results column"):
        results.select(df, methd="plain")
    with pytest.raises(results.MissingRowsError, match="run 04_base_model_checks first"):
        results.require(df, method="zero", directions="oracle", trained=False)
    with pytest.raises(results.MissingRowsError, match="run 05_caft first"):
        results.require(df, method="zero", trained=True)
    with pytest.raises(results.MissingRowsError, match="run 01_plain_finetune first"):
        results.require(df, method="plain", seed=3, trained=True)


def test_comparison_keeps_base_and_fine_tunes_not_checks():
    df = pd.DataFrame(
        _rows(method="base", trained=False)
        + _rows(method="zero", trained=False)
        + _rows(method="zero")
        + _rows(method="base", directions="pca/blocks.0.hook_resid_post/pca0", trained=False)
    )
    out = results.comparison(df, ["m"])
    assert sorted(zip(out["method"], out["trained"])) == [("base", False), ("zero", True)]


def test_run_dir_names_the_chapter_that_writes_each_artefact(tmp_path):
    run = RunDir(tmp_path)
    for name, artefact in ARTEFACTS.items():
        with pytest.raises(files.MissingArtefactError, match=re.escape(f"run {artefact.chapter} first")):
            run.require(name, "x")
    with pytest.raises(files.MissingArtefactError, match="run 05_caft first"):
        run.require_finetune("zero", "pca", seed=1)
    with pytest.raises(files.MissingArtefactError, match="run 01_plain_finetune first"):
        run.require_finetune(seed=1)
    with pytest.raises(ValueError, match="unknown artefact 'diff'; valid: organism"):
        run.path("diff")
    assert run.finetune("steer_mean", "pca", "k=-3", 2).name == "steer_mean-pca-k-3-seed2"
    assert str(run.path("subspaces", "pca")) == str(tmp_path / "subspaces" / "pca") and str(run / "x") == str(
        tmp_path / "x"
    )
