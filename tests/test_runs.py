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


def test_config_hash_is_stable_and_sensitive():
    assert files.config_hash({"a": 1, "b": 2}) == files.config_hash({"b": 2, "a": 1})
    assert files.config_hash({"a": 1}) != files.config_hash({"a": 2})
