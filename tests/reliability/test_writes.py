"""A write that fails (no space, no permission, read-only file system) is one line naming the file and
the cause; nothing partial is left and the old file is intact."""

import errno
import os
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from caft_tl.core import files
from caft_tl.training.pretrain import PretrainConfig, load_or_pretrain
from tests.conftest import TINY


def _full_disk(monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", fsync)


@pytest.mark.parametrize("run_dir", [False, True])
def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch, run_dir):
    if run_dir:
        files.mark_run_dir(tmp_path)
    path = tmp_path / "sub" / "run.json"
    files.write_json(path, {"old": 1})
    _full_disk(monkeypatch)
    with pytest.raises(files.WriteError) as e:
        files.write_json(path, {"new": 2})
    assert str(e.value) == f"cannot write {str(path)!r}: No space left on device"
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert files.read_json(path) == {"old": 1}
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_safetensors_io_error_names_the_file(tmp_path, monkeypatch):
    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(files, "save_file", save_file)
    path = tmp_path / "w.safetensors"
    with pytest.raises(files.WriteError, match=rf"^cannot write {str(path)!r}: No space left on device$"):
        files.write_tensors(path, {"w": torch.zeros(2)})
    assert list(tmp_path.iterdir()) == []


def test_no_permission_names_the_file(tmp_path, monkeypatch):
    def mkstemp(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)
    target = tmp_path / "a.csv"
    with (
        pytest.raises(files.WriteError, match=rf"^cannot write {str(target)!r}: Permission denied$"),
        files.atomic_write(target) as f,
    ):
        f.write("x")


def test_a_bug_inside_the_block_is_not_called_a_write_error(tmp_path):
    with pytest.raises(KeyError), files.atomic_write(tmp_path / "a.txt"):
        raise KeyError("bug")
    assert list(tmp_path.iterdir()) == []


def test_a_full_organism_cache_is_reported_against_the_cache_folder(tmp_path, monkeypatch):
    _full_disk(monkeypatch)
    with pytest.raises(files.WriteError) as e:
        load_or_pretrain(
            "persona_em",
            model_cfg=TINY,
            cfg=PretrainConfig(steps=2, batch_size=4),
            cache_dir=tmp_path / "cache",
            progress=False,
        )
    cache = tmp_path / "cache" / "organisms"
    assert str(e.value).startswith(f"cannot write '{cache}/persona_em-")
    assert str(e.value).endswith(
        f"/model.safetensors': No space left on device; the cache is "
        f"{str(cache)!r}: free space there or set CAFT_TL_CACHE to another folder"
    )
    monkeypatch.undo()
    assert not list(cache.rglob("model.safetensors")) and not list(cache.rglob("*.tmp"))


def test_a_byte_flipped_in_a_cached_organism_is_caught(tmp_path):
    kwargs = {
        "model_cfg": TINY,
        "cfg": PretrainConfig(steps=2, batch_size=4),
        "cache_dir": tmp_path,
        "progress": False,
    }
    _, _, folder = load_or_pretrain("persona_em", **kwargs)
    weights = folder / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-3] ^= 0x01  # a weight's byte: still loadable, a silently different number without the checksum
    weights.write_bytes(bytes(blob))
    with pytest.raises(files.CorruptFileError) as e:
        load_or_pretrain("persona_em", **kwargs)
    expected = f"cannot read {str(weights)!r}: its content changed since caft-tl wrote it"
    assert str(e.value).startswith(expected)
