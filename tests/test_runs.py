import csv

import pytest

from caft_tl.core import files


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    path = tmp_path / "out.json"
    files.write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with files.atomic_write(path) as f:
            f.write("half")
            raise RuntimeError("crash")
    assert files.read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def _row(**kw):
    base = dict(task="t", method="plain", directions="none", param="", seed=0, split="chat", metric="m", value=0.5)
    return base | kw


def test_append_results_replaces_same_key_and_keeps_column_order(tmp_path):
    path = tmp_path / "results.csv"
    files.append_results(path, [_row(), _row(seed=1)])
    files.append_results(path, [_row(value=0.9)])
    rows = list(csv.DictReader(open(path)))
    assert list(rows[0]) == list(files.RESULT_COLUMNS)
    assert len(rows) == 2 and rows[0]["value"] == "0.9"
    with pytest.raises(ValueError, match="expected exactly"):
        files.append_results(path, [{"task": "t"}])


def test_missing_artefact_names_the_chapter(tmp_path):
    with pytest.raises(files.MissingArtefactError, match="run 02_activation_diffing first"):
        files.require(tmp_path, "diffs.safetensors", "diffs")


def test_config_hash_is_stable_and_sensitive():
    assert files.config_hash({"a": 1, "b": 2}) == files.config_hash({"b": 2, "a": 1})
    assert files.config_hash({"a": 1}) != files.config_hash({"a": 2})
