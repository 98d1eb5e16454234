"""Load any model the suite runs: an organism folder or a Hugging Face checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from caft_tl.core import files
from caft_tl.core.models import load_model
from caft_tl.real.hf_models import load_hf
from caft_tl.real.settings import resolve_model


def load(name_or_path: str | os.PathLike, device: str | None = None, dtype: str = "float32"):
    """Any model the suite can run: an organism folder (:func:`save_model`) → ``HookedTransformer``;
    a local HF folder or a hub name → ``TransformerBridge`` with TL hook names
    (:func:`caft_tl.real.hf_models.load_hf`, which documents why that route); a model the project
    makes itself by its name (``smollm2-135m``: :func:`caft_tl.real.settings.resolve_model`).

    Args:
        name_or_path: an organism folder, a local HF folder, a hub name (with network) or ``smollm2-135m``.
        device: ``cpu``, ``cuda``, ... (default: CUDA where available).
        dtype: ``float32``, ``bfloat16`` or ``float16`` (HF models only).

    Returns:
        A ``HookedTransformer`` or ``TransformerBridge`` in eval mode, with TL hook names.

    Example:
        model = load("/models/Qwen2.5-0.5B-Instruct", device="cuda", dtype="bfloat16")
    """
    name_or_path = resolve_model(str(name_or_path)) if isinstance(name_or_path, str) else name_or_path
    path = Path(name_or_path)
    if (
        (path / "model.safetensors").exists()
        and (path / "config.json").exists()
        and "model"
        in files.read_json(
            path / "config.json", fix="re-run the step that wrote the folder, or re-download the model"
        )
    ):
        return load_model(path, device)[0]
    return load_hf(name_or_path, device, dtype)
