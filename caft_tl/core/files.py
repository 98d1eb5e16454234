"""Files: atomic writes, JSON and safetensors, config hashes, the cache folder, provenance.

Every file caft-tl writes goes through :func:`atomic_write` (temporary file in the same folder,
fsync, rename), so a crash never leaves a half-written artefact that a later chapter would read;
a write that fails (no space, no permission, read-only file system) is a one-line
:class:`WriteError` naming the file and the cause.

**Checksums.** In a run directory (a folder holding the :data:`RUN_MARKER` file, made by
:func:`mark_run_dir`: the suite's provenance and every chapter's ``setup`` make it), every file
written through :func:`atomic_path` is recorded with its sha256 in ``checksums.json`` *of its own
folder* (one manifest per folder: a fine-tune's folder, ``subspaces/<set>/``, the run's root).
The readers (:func:`read_json`, :func:`read_tensors`, :func:`verify`) compare a file that its
folder's manifest lists, and refuse a mismatch in one line naming the file.
A manifest is updated by read-modify-write under an exclusive ``flock`` on ``.checksums.lock`` in
the same folder (forked fine-tune workers may write into one folder) and replaced atomically, so
readers take no lock. The update is two-phase (the entry accepts the old and the new digest until
the file is renamed into place, then only the new one), so a ``kill -9`` between the rename and
the manifest update never turns a good file into a false mismatch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class MissingArtefactError(FileNotFoundError):
    """An upstream chapter's artefact is not in the run directory."""


class CorruptFileError(ValueError):
    """A file cannot be read (truncated, corrupted, or not what its checksum says)."""


class WriteError(OSError):
    """A file could not be written (no space, no permission, read-only file system): one line
    naming the path and the cause; nothing partial is left (the old file, if any, is intact)."""


def write_error(path: str | os.PathLike, e: BaseException) -> WriteError | None:
    """The :class:`WriteError` for ``e`` raised while writing ``path`` — an ``OSError`` or a
    safetensors I/O error — or None for any other exception (a bug, not the disk)."""
    if isinstance(e, WriteError):
        return e
    not_the_disk = (FileNotFoundError, IsADirectoryError, NotADirectoryError)  # a wrong path: raised as it is
    if isinstance(e, OSError) and not isinstance(e, not_the_disk):
        cause = e.strerror or str(e) or type(e).__name__
    elif isinstance(e, SafetensorError) and "I/O error" in str(e):
        cause = str(e).rsplit("I/O error: ", 1)[-1].split(" (os error")[0]
    else:
        return None
    err = WriteError(f"cannot write {str(path)!r}: {cause}")
    err.errno = getattr(e, "errno", None)
    return err


#: the file that marks a run directory (see the module's docstring)
RUN_MARKER = ".caft_tl_run"
#: each folder's manifest of checksums, and its lock
MANIFEST, MANIFEST_LOCK = "checksums.json", ".checksums.lock"
_OWN = {RUN_MARKER, MANIFEST, MANIFEST_LOCK}


def mark_run_dir(run_dir: str | os.PathLike) -> Path:
    """Make ``run_dir`` a run directory: files written under it get checksums from now on."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_MARKER).touch()
    return run_dir


def run_root(folder: str | os.PathLike) -> Path | None:
    """The run directory that ``folder`` is in (the nearest one up holding :data:`RUN_MARKER`), or None."""
    folder = Path(os.path.abspath(folder))
    for p in (folder, *folder.parents):  # a few stat calls: cheaper than any write
        if (p / RUN_MARKER).exists():
            return p
    return None


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _read_manifest(folder: Path) -> dict[str, str | list[str]]:
    file = folder / MANIFEST
    try:
        blob = json.loads(file.read_bytes())
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CorruptFileError(
            f"cannot read {str(file)!r}: the checksums of this folder are corrupted; "
            "delete it (the folder's files are then no longer checked) or re-run the step that wrote the "
            "folder"
        ) from None
    return blob.get("sha256", {}) if isinstance(blob, dict) else {}


#: the process's umask, read once: files written atomically get the mode a plain ``open`` would give
#: them (``0o666 & ~umask``), not ``mkstemp``'s private 0600
_UMASK = os.umask(0)
os.umask(_UMASK)


def _write_manifest(folder: Path, entries: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{MANIFEST}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"sha256": dict(sorted(entries.items()))}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / MANIFEST)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _manifest_lock(folder: Path) -> Iterator[None]:
    import fcntl

    with open(folder / MANIFEST_LOCK, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _digests(entry: str | list[str] | None) -> list[str]:
    return [] if entry is None else [entry] if isinstance(entry, str) else list(entry)


def _replace_recorded(tmp: Path, path: Path) -> None:
    """``os.replace(tmp, path)``, recording ``path``'s new sha256 in its folder's manifest
    (two-phase, locked)."""
    digest = sha256_file(tmp)
    folder = path.parent
    with _manifest_lock(folder):
        entries = _read_manifest(folder)
        entries[path.name] = list(
            dict.fromkeys(_digests(entries.get(path.name)) + [digest])
        )  # old or new: both valid
        _write_manifest(folder, entries)
        os.replace(tmp, path)
        entries[path.name] = digest
        entries = {
            name: d for name, d in entries.items() if (folder / name).exists()
        }  # deleted files (finished checkpoints)
        _write_manifest(folder, entries)


def record_checksums(folder: str | os.PathLike, names: list[str]) -> None:
    """Record the sha256 of files written into ``folder`` by someone else (e.g. SAELens), in its manifest."""
    folder = Path(folder)
    with _manifest_lock(folder):
        entries = _read_manifest(folder)
        entries.update({name: sha256_file(folder / name) for name in names})
        _write_manifest(folder, entries)


def verify(path: str | os.PathLike, data: bytes | None = None) -> None:
    """Compare ``path`` (or its bytes ``data``, already read) with the sha256 that its folder's
    manifest records, if it records one; one-line :class:`CorruptFileError` on a mismatch."""
    path = Path(path)
    if not (path.parent / MANIFEST).exists():
        return
    expected = _digests(_read_manifest(path.parent).get(path.name))
    if not expected:
        return
    digest = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(path)
    if digest not in expected:
        raise CorruptFileError(
            f"cannot read {str(path)!r}: its content changed since caft-tl wrote it (sha256 {digest[:12]}…, "
            f"recorded {expected[-1][:12]}… in {MANIFEST}); delete it and re-run the step that wrote it"
        )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path``; once the block succeeds, fsync it and rename it into
    place, so readers see the old file or the whole new one, never a part. In a run directory,
    the file's sha256 goes into its folder's manifest (see the module's docstring)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise (write_error(path, e) or e) from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if path.name not in _OWN and run_root(path.parent) is not None:
            _replace_recorded(Path(tmp), path)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if (err := write_error(path, e)) is not None and err is not e:
            raise err from None
        raise


def replace_block(path: str | os.PathLike, begin: str, end: str, text: str) -> None:
    """Replace what stands between the markers ``begin`` and ``end`` of a text file (a README's
    generated block) with ``text``, atomically; a file without both markers raises in one line."""
    path = Path(path)
    content = path.read_text()
    if begin not in content or end not in content:
        raise ValueError(f"{path} has no {begin} … {end} block to replace")
    head, rest = content.split(begin, 1)
    with atomic_write(path) as f:
        f.write(head + begin + "\n" + text + end + rest.split(end, 1)[1])


def write_generated(
    out: str | os.PathLike,
    text: str,
    readme: str | os.PathLike | None = None,
    begin: str = "",
    end: str = "",
    block: str | None = None,
) -> None:
    """A table script's output: ``text`` to ``out`` (atomically), then, with ``readme``, ``block``
    (default ``text``) into that file's block between ``begin`` and ``end`` (:func:`replace_block`;
    a README without the markers raises in one line, after ``out`` is written)."""
    with atomic_write(out) as f:
        f.write(text)
    if readme:
        replace_block(readme, begin, end, text if block is None else block)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[io.IOBase]:
    """Open a file that appears at ``path`` whole, or not at all if the block raises."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (``object``, ``array``, ``string``, …), for error messages."""
    names = {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_jsonable)


def read_json(path: str | os.PathLike, fix: str = "delete it and re-run the step that wrote it") -> Any:
    """A JSON file, checked against its folder's checksums; a truncated or corrupted file (or a
    checksum mismatch) is a one-line :class:`CorruptFileError` naming it and saying ``fix``."""
    path = Path(path)
    data = path.read_bytes()
    verify(path, data)
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = (
            f"{e.msg}: line {e.lineno} column {e.colno}"
            if isinstance(e, json.JSONDecodeError)
            else "not UTF-8 text"
        )
        raise CorruptFileError(
            f"cannot read {str(path)!r}: not valid JSON, truncated or corrupted ({where}); {fix}"
        ) from None


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """Save tensors as safetensors, atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))


def read_tensors(
    path: str | os.PathLike, fix: str = "delete it and re-run the step that wrote it"
) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never unpickles), checked against its folder's checksums;
    one-line :class:`CorruptFileError` naming it if it is truncated or corrupted."""
    if not Path(path).exists():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    verify(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CorruptFileError(
            f"cannot read {str(path)!r}: truncated or corrupted ({reason}); {fix}"
        ) from None


#: environment variable naming the cache folder (organisms, SAEs); default ``cache/`` in the repository
CACHE_ENV = "CAFT_TL_CACHE"


def cache_dir() -> Path:
    """Where pre-trained organisms and SAEs are cached, by a hash of their config."""
    return Path(os.environ.get(CACHE_ENV, Path(__file__).resolve().parents[2] / "cache"))


def cache_folder(kind: str, root: str | os.PathLike | None = None) -> Path:
    """``<cache>/<kind>`` (``organisms``, ``saes``; the cache is ``root`` or :func:`cache_dir`),
    marked like a run directory, so what is written there gets checksums and is verified when read."""
    folder = Path(root or cache_dir()) / kind
    try:
        return mark_run_dir(folder)
    except OSError as e:
        raise (write_error(folder, e) or e) from None


@contextlib.contextmanager
def writing_to_cache(folder: str | os.PathLike) -> Iterator[None]:
    """Re-raise a :class:`WriteError` inside the block with what to do about the cache ``folder``."""
    try:
        yield
    except WriteError as e:
        err = WriteError(
            f"{e}; the cache is {str(folder)!r}: free space there or set {CACHE_ENV} to another folder"
        )
        err.errno = e.errno
        raise err from None


def config_hash(obj: Any, length: int = 12) -> str:
    """Stable short hash of a (dataclass) config, used as a cache key."""
    blob = json.dumps(obj, sort_keys=True, default=_jsonable).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def read_csv(path: str | os.PathLike, fix: str = "delete it and re-run the step that wrote it", **kwargs):
    """A CSV table caft-tl wrote, as a pandas DataFrame (``kwargs`` to ``pandas.read_csv``),
    checked against its folder's checksums; a file pandas cannot parse (or whose columns do not
    take the given dtypes) is a one-line :class:`CorruptFileError` naming it and saying ``fix``."""
    import pandas as pd

    verify(path)
    try:
        return pd.read_csv(path, **kwargs)
    except (ValueError, UnicodeDecodeError) as e:  # ParserError and EmptyDataError are ValueErrors
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorruptFileError(f"cannot read {str(path)!r}: {reason[:120]}; {fix}") from None


def write_csv(path: str | os.PathLike, df) -> None:
    """Write a pandas DataFrame as CSV, atomically."""
    with atomic_write(path) as f:
        df.to_csv(f, index=False, lineterminator="\n")


PROVENANCE_PACKAGES = ("caft-tl", "torch", "transformer-lens", "sae-lens", "papermill", "numpy")


def write_provenance(run_dir: str | os.PathLike, extra: dict[str, Any]) -> dict[str, Any]:
    """Record what produced a run — package versions, Python, git commit (and whether tracked
    files had uncommitted changes), time — plus ``extra`` (parameters, seeds) in ``provenance.json``."""
    import datetime
    import platform
    import subprocess
    from importlib import metadata

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git(
        "status", "--porcelain", "--untracked-files=no"
    )  # tracked files changed; a run's own new outputs do not count
    record = {
        "packages": {p: version(p) for p in PROVENANCE_PACKAGES},
        "python": platform.python_version(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **extra,
    }
    mark_run_dir(run_dir)
    write_json(Path(run_dir) / "provenance.json", record)
    return record
