"""Files: atomic writes, JSON and safetensors, config hashes, the cache folder, provenance.

Every file caft-tl writes goes through :func:`atomic_write` (temporary file in the same folder,
fsync, rename), so a crash never leaves a half-written artefact that a later chapter would read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class MissingArtefactError(FileNotFoundError):
    """An upstream chapter's artefact is not in the run directory."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path``; once the block succeeds, fsync it and rename it into
    place, so readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_jsonable)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """Save tensors as safetensors, atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))


class CorruptFileError(ValueError):
    """A weights, subspace or checkpoint file cannot be read (truncated or corrupted)."""


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never unpickles); one-line error if it is truncated or corrupted."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CorruptFileError(
            f"cannot read {str(path)!r}: truncated or corrupted ({reason}); delete it and re-run the step that wrote it"
        ) from None


#: environment variable naming the cache folder (organisms, SAEs); default ``cache/`` in the repository
CACHE_ENV = "CAFT_TL_CACHE"


def cache_dir() -> Path:
    """Where pre-trained organisms and SAEs are cached, by a hash of their config."""
    return Path(os.environ.get(CACHE_ENV, Path(__file__).resolve().parents[2] / "cache"))


def config_hash(obj: Any, length: int = 12) -> str:
    """Stable short hash of a (dataclass) config, used as a cache key."""
    blob = json.dumps(obj, sort_keys=True, default=_jsonable).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def write_csv(path: str | os.PathLike, df) -> None:
    """Write a pandas DataFrame as CSV, atomically."""
    with atomic_write(path) as f:
        df.to_csv(f, index=False, lineterminator="\n")


PROVENANCE_PACKAGES = ("caft-tl", "torch", "transformer-lens", "sae-lens", "papermill", "numpy")


def write_provenance(run_dir: str | os.PathLike, extra: dict[str, Any]) -> dict[str, Any]:
    """Record what produced a run — package versions, Python, git commit (and whether the tree
    had uncommitted changes), time — plus ``extra`` (parameters, seeds) in ``provenance.json``."""
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
            out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain")
    record = {
        "packages": {p: version(p) for p in PROVENANCE_PACKAGES},
        "python": platform.python_version(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    write_json(Path(run_dir) / "provenance.json", record)
    return record
