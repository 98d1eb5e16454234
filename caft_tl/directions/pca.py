"""PCA of streamed activation diffs: the top principal directions of ``ft − base`` at a hook."""

from __future__ import annotations

import torch

from caft_tl.core.subspace import Subspace
from caft_tl.diffing.diffs import MomentStats


def pca(stats: MomentStats, k: int, hook_name: str, center: bool = False) -> tuple[Subspace, torch.Tensor]:
    """Top-``k`` principal directions of streamed vectors; returns (subspace, explained fractions).

    ``center=False`` (default) uses the uncentered second moment E[δ δᵀ], so a constant shift of
    the fine-tune (the mean diff) is kept as a direction rather than subtracted away.

    Args:
        stats: streamed moments, e.g. ``collect_diff_stats(...)[hook]["diff"]``.
        k: the number of directions, 1..d_model.
        hook_name: the hook the moments were read at.
        center: use the covariance instead of the uncentered second moment.

    Returns:
        (a :class:`Subspace` [d_model, k] labelled ``PC0``..., the explained fractions [k]).

    Example:
        sub, explained = pca(stats[hook]["diff"], k=4, hook_name=hook)
    """
    m = stats.second_moment(center=center)
    if not 1 <= k <= m.shape[0]:
        raise ValueError(f"k={k} out of range 1..{m.shape[0]}")
    evals, evecs = torch.linalg.eigh(m)  # ascending
    order = evals.flip(0).clamp_min(0)
    basis = evecs.flip(1)[:, :k].float()
    # a deterministic sign: the mean diff projects positively on each PC
    sign = torch.sign(stats.total.float() @ basis)
    basis = basis * torch.where(sign == 0, torch.ones_like(sign), sign)
    frac = order / order.sum().clamp_min(1e-30)
    sub = Subspace(hook_name, basis, [f"PC{i}" for i in range(k)], {"method": "pca", "center": center})
    return sub, frac[:k].float()
