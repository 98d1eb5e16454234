"""A non-interpretive choice of directions: the top PCs whose zero-ablation does not hurt the
plain fine-tuned model's loss on its training data.

If it does as well as interpretation, interpretation added nothing. At each hook, every
candidate PC is zero-ablated alone (``h − q qᵀ h`` at all positions) in the plain fine-tuned
model and its response loss on the fine-tuning data is measured; a PC *hurts* when it raises the
loss by more than ``tolerance`` nats. :func:`harmless_choice` keeps, at each hook, as many PCs
as asked (the rank of the interpreted set there), the top-ranked non-hurting ones first, then
the least-hurting of the rest — so the rank always matches.
"""

from __future__ import annotations

from functools import partial

import pandas as pd
import torch

from caft_tl.core.data import TokenDataset
from caft_tl.core.models import response_loss
from caft_tl.core.subspace import Subspace


def _ablate(h: torch.Tensor, hook, q: torch.Tensor) -> torch.Tensor:
    q = q.to(h.device, h.dtype)
    return h - (h @ q)[..., None] * q


@torch.no_grad()
def _loss(model, data: TokenDataset, fwd_hooks, batch_size: int) -> float:
    total, n = 0.0, 0
    for batch in data.batches(batch_size):
        with model.hooks(fwd_hooks=fwd_hooks):
            total += response_loss(model, batch, reduction="sum").item()
        n += int(batch.target_mask.sum())
    return total / max(n, 1)


def ablation_loss_deltas(
    model, data: TokenDataset, subspaces: dict[str, Subspace], batch_size: int = 256
) -> pd.DataFrame:
    """One row per direction: hook, index, loss (with it zero-ablated), delta (minus the loss without)."""
    plain = _loss(model, data, [], batch_size)
    rows = []
    for hook, sub in subspaces.items():
        for j in range(sub.k):
            loss = _loss(model, data, [(hook, partial(_ablate, q=sub.basis[:, j]))], batch_size)
            rows.append({"hook": hook, "index": j, "loss": loss, "delta": loss - plain})
    return pd.DataFrame(rows)


def harmless_choice(
    deltas: pd.DataFrame, counts: dict[str, int], tolerance: float = 0.1
) -> dict[str, list[int]]:
    """``{hook: indices}``: ``counts[hook]`` PCs per hook (module docstring), in index order."""
    out = {}
    for hook, n in counts.items():
        d = deltas[deltas["hook"] == hook].sort_values("index")
        if n <= 0 or d.empty:
            out[hook] = []
            continue
        ok = d[d["delta"] <= tolerance]["index"].tolist()
        rest = d[d["delta"] > tolerance].sort_values("delta", kind="stable")["index"].tolist()
        out[hook] = sorted((ok + rest)[:n])
    return out
