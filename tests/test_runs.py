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


def test_atomically_written_files_get_the_mode_open_would_give(tmp_path):
    import os
    import stat

    from caft_tl.core import files

    old = os.umask(0o022)
    os.umask(old)
    files.write_json(tmp_path / "a.json", {"x": 1})
    (tmp_path / "plain.txt").write_text("x")
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)
    assert mode(tmp_path / "a.json") == mode(tmp_path / "plain.txt") == 0o666 & ~old  # not mkstemp's 0600
