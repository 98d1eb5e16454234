"""Data filtering by projection (Persona Vectors' data-side tool): rank fine-tuning examples by how
far they move the model along chosen directions, and drop the top ones.

An example's score is the mean, over its response-writing positions, of ``‖Qᵀ (h_ft − h_base)‖`` —
the part of the fine-tune's activation change that lies in the subspace — summed over the
subspaces' hooks (``h_ft``: the plain fine-tune, ``h_base``: the base model). It reads the
fine-tuning data and the plain fine-tune only (the information rule's allowed inputs).
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer

from caft_tl.core.activations import activations
from caft_tl.core.data import TokenDataset
from caft_tl.core.subspace import Subspace


def projection_scores(
    base: HookedTransformer,
    finetuned: HookedTransformer,
    data: TokenDataset,
    subspaces: list[Subspace],
    positions: str = "response",
) -> torch.Tensor:
    """[n] each example's score (module docstring); higher: the example pushes the model further along
    the subspaces."""
    if not subspaces:
        raise ValueError(
            "no subspaces to project on; pass the chosen directions (e.g. chapter 03's 'pca' set)"
        )
    mask = data.position_mask(positions).float()  # [n, pos]
    if (mask.sum(1) == 0).any():
        raise ValueError(f"positions={positions!r} selects no position of some examples")
    score = torch.zeros(len(data))
    for s in subspaces:
        diff = activations(finetuned, data, s.hook_name) - activations(
            base, data, s.hook_name
        )  # [n, pos, d_model]
        along = (diff @ s.basis.to(diff.dtype)).norm(dim=-1)  # [n, pos]
        score += (along * mask).sum(1) / mask.sum(1)
    return score


def drop_top(data: TokenDataset, scores: torch.Tensor, share: float) -> TokenDataset:
    """``data`` without its ``share`` (0–1) highest-scoring examples, in the original order."""
    if not 0 <= share < 1:
        raise ValueError(f"share {share!r} must be in [0, 1): the fraction of examples to drop")
    if scores.shape != (len(data),):
        raise ValueError(f"scores have shape {tuple(scores.shape)}; expected [{len(data)}] (one per example)")
    n_drop = round(share * len(data))
    keep = torch.ones(len(data), dtype=torch.bool)
    keep[torch.argsort(scores, descending=True, stable=True)[:n_drop]] = False
    return data.subset(keep.nonzero().flatten())
