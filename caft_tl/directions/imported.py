"""Directions made by other tools, read with their layer convention named.

Tools count layers differently; TransformerLens hook names do not:

- ``hidden_states`` (Persona Vectors, HF ``output_hidden_states``): index ``L`` is the residual
  stream *before* block ``L`` — ``hidden_states[0]`` the embeddings (``blocks.0.hook_resid_pre``),
  ``hidden_states[L]`` for ``L ≥ 1`` the output of block ``L − 1`` (``blocks.{L-1}.hook_resid_post``).
- ``layer_output`` (the CAFT code: a forward hook on ``model.layers[L]``): index ``L`` is the output
  of block ``L`` (``blocks.{L}.hook_resid_post``).

So Persona Vectors' layer 20 and CAFT's layer 19 are the same hook, ``blocks.19.hook_resid_post``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from caft_tl.core import files
from caft_tl.core.subspace import Subspace, orthonormalize

#: convention name -> what its layer index ``L`` means
CONVENTIONS = {
    "hidden_states": "hidden_states[L]: before block L (Persona Vectors; 0 = embeddings)",
    "layer_output": "the output of model.layers[L] (the CAFT code's forward hooks)",
}


def hook_for(layer: int, convention: str, n_layers: int) -> str:
    """The TransformerLens residual hook a tool's layer index names."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown layer convention {convention!r}; valid: {', '.join(CONVENTIONS)}")
    top = n_layers if convention == "hidden_states" else n_layers - 1
    if not (isinstance(layer, int) and 0 <= layer <= top):
        raise ValueError(
            f"layer {layer!r} is out of range for {convention!r} on a {n_layers}-layer model; valid: 0..{top}"
        )
    if convention == "hidden_states":
        return "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"
    return f"blocks.{layer}.hook_resid_post"


def persona_vectors(
    vectors: torch.Tensor | str | os.PathLike, layers: list[int], n_layers: int
) -> list[Subspace]:
    """Rank-1 subspaces from a Persona-Vectors tensor ``[n_layers + 1, d_model]`` (a tensor or a
    ``torch.save`` file; row ``L`` is ``hidden_states[L]``) at the given layers (that convention).
    The vector's norm is kept in the provenance (``add`` steering scales by it)."""
    if not isinstance(vectors, torch.Tensor):
        vectors = _load_torch(Path(vectors))
    if vectors.ndim != 2 or vectors.shape[0] != n_layers + 1:
        raise ValueError(
            f"persona vectors have shape {tuple(vectors.shape)}; "
            f"expected [n_layers + 1 = {n_layers + 1}, d_model] "
            f"(row L is hidden_states[L])"
        )
    out = []
    for layer in layers:
        hook = hook_for(layer, "hidden_states", n_layers)
        v = vectors[layer].float()
        if not torch.isfinite(v).all() or v.norm() == 0:
            raise ValueError(f"persona vector at hidden_states[{layer}] is zero or not finite")
        out.append(
            Subspace(
                hook,
                (v / v.norm())[:, None],
                [f"persona_vector{layer}"],
                {
                    "method": "imported",
                    "convention": "hidden_states",
                    "layer": layer,
                    "norm": v.norm().item(),
                },
            )
        )
    return out


def caft_pcs(config: str | os.PathLike) -> list[Subspace]:
    """Subspaces from a CAFT-code PCA intervention file: JSON ``{"path": prefix, "dict": {layer: "all" |
    [pc indices]}, "n_pcs": optional}`` with one ``<prefix><layer>.npy`` of PCs as rows [n_pcs, d_model]
    per layer; layers in the ``layer_output`` convention. (The file's ``"random"`` choice draws
    unseeded coin flips: refused; make random sets with :func:`caft_tl.core.subspace.random_subspace`.)"""
    config = Path(config)
    expected = "expected {'path': prefix, 'dict': {layer: 'all' | [indices]}, 'n_pcs': optional count}"
    if not config.is_file():
        raise FileNotFoundError(f"no CAFT intervention file {str(config)!r}; {expected}")
    spec = files.read_json(config, fix=expected)
    if not isinstance(spec, dict):
        raise ValueError(f"{config}: a JSON {files.json_type(spec)}; {expected}")
    missing = [k for k in ("path", "dict") if k not in spec]
    if missing:
        raise ValueError(f"{config}: missing {', '.join(missing)}; {expected}")
    if not isinstance(spec["path"], str) or not isinstance(spec["dict"], dict) or not spec["dict"]:
        raise ValueError(f"{config}: 'path' = {spec['path']!r}, 'dict' = {spec['dict']!r}; {expected}")
    n_pcs = spec.get("n_pcs")
    if n_pcs is not None and (isinstance(n_pcs, bool) or not isinstance(n_pcs, int) or n_pcs < 1):
        raise ValueError(f"{config}: n_pcs = {n_pcs!r}; expected a positive integer")
    out = []
    for layer, choice in spec["dict"].items():
        if not str(layer).isdigit():
            raise ValueError(f"{config}: layer {layer!r} is not a layer index; {expected}")
        pcs = _load_pcs(Path(f"{spec['path']}{layer}.npy"), config)[:n_pcs]  # [n_pcs, d_model]
        if choice == "all":
            idx = list(range(pcs.shape[0]))
        elif (
            isinstance(choice, list)
            and all(isinstance(i, int) and 0 <= i < pcs.shape[0] for i in choice)
            and choice
        ):
            idx = choice
        else:
            raise ValueError(
                f"{config}: layer {layer} chooses {choice!r}; "
                f"valid: 'all' or a non-empty list of PC indices 0..{pcs.shape[0] - 1}"
            )
        basis = orthonormalize(torch.from_numpy(np.asarray(pcs[idx], dtype=np.float32)).T)
        out.append(
            Subspace(
                f"blocks.{int(layer)}.hook_resid_post",
                basis,
                [f"pc{i}" for i in idx][: basis.shape[1]],
                {
                    "method": "imported",
                    "convention": "layer_output",
                    "layer": int(layer),
                    "source": str(config),
                },
            )
        )
    return out


def _load_torch(path: Path) -> torch.Tensor:
    """A ``torch.save`` file holding one tensor (weights only: nothing else is unpickled)."""
    if not path.is_file():
        raise FileNotFoundError(f"no persona-vectors file {str(path)!r}")
    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise files.CorruptFileError(
            f"cannot read {str(path)!r}: not a torch.save tensor ({reason})"
        ) from None
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{path}: holds a {type(t).__name__}; expected one tensor [n_layers + 1, d_model]")
    return t


def _load_pcs(path: Path, config: Path) -> np.ndarray:
    """One layer's PCs ``[n_pcs, d_model]``, finite, from a ``.npy`` file (never unpickled)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"no PC file {str(path)!r} (named by {str(config)!r}: its 'path' + the layer + '.npy')"
        )
    try:
        pcs = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise files.CorruptFileError(
            f"cannot read {str(path)!r}: not a .npy array, truncated or corrupted ({str(e)[:100]})"
        ) from None
    numbers = np.issubdtype(pcs.dtype, np.number) and np.isfinite(pcs).all()
    if pcs.ndim != 2 or pcs.shape[0] == 0 or not numbers:
        raise ValueError(
            f"{path}: an array of shape {pcs.shape} and dtype {pcs.dtype}; expected finite PCs "
            "as rows [n_pcs, d_model]"
        )
    return pcs
