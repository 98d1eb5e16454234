"""Interpreting directions: top examples, logit lens, ground-truth concept scores, and the rule
that chooses the directions to ablate."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import torch

from caft_tl.core.activations import activations
from caft_tl.core.data import TokenDataset
from caft_tl.core.subspace import Subspace

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


def projections(model: HookedTransformer, data: TokenDataset, subspace: Subspace) -> torch.Tensor:
    """[n, pos, k] projection of the activations at the subspace's hook on each direction."""
    subspace.check_width(model.cfg.d_model)
    return activations(model, data, subspace.hook_name) @ subspace.basis


def top_examples(
    model: HookedTransformer,
    data: TokenDataset,
    subspace: Subspace,
    vocab,
    n: int = 5,
    positions: str = "all",
) -> pd.DataFrame:
    """Top-``n`` distinct contexts activating each direction most positively and most negatively.

    Columns: direction, sign, rank, value, context (tokens up to and including the position,
    the position's token in [brackets]), example and position (indices into ``data.tokens``).
    """
    return top_contexts(projections(model, data, subspace), data, subspace.labels, vocab, n, positions)


def top_contexts(
    values: torch.Tensor,
    data: TokenDataset,
    labels: list[str],
    vocab,
    n: int = 5,
    positions: str = "all",
    signs=(+1, -1),
) -> pd.DataFrame:
    """Top-``n`` distinct contexts per column of ``values`` [n_ex, pos, k] (a direction's
    projection, an SAE latent's activation), for each sign in ``signs``; columns as :func:`top_examples`."""
    mask = data.position_mask(positions)  # [n_ex, pos]
    rows = []
    for j, label in enumerate(labels):
        vals = values[..., j].masked_fill(~mask, float("nan")).flatten()
        for sign in signs:
            order = (sign * vals).nan_to_num(float("-inf")).argsort(descending=True)
            seen: set[str] = set()
            for flat in order.tolist():
                if len(seen) == n or vals[flat].isnan():
                    break
                i, t = divmod(flat, values.shape[1])
                toks = vocab.to_str_tokens(data.tokens[i, : t + 1])
                toks[-1] = f"[{toks[-1]}]"
                context = " ".join(toks)
                if context in seen:  # the same context from another document: show distinct ones
                    continue
                seen.add(context)
                rows.append(
                    {
                        "direction": label,
                        "sign": "+" if sign > 0 else "-",
                        "rank": len(seen) - 1,
                        "value": vals[flat].item(),
                        "context": context,
                        "example": i,
                        "position": t,
                    }
                )
    return pd.DataFrame(rows)


def logit_lens(model: HookedTransformer, subspace: Subspace, vocab, n: int = 5) -> pd.DataFrame:
    """Tokens whose unembedding aligns most (+) and least (−) with each direction: ``W_Uᵀ q``."""
    subspace.check_width(model.cfg.d_model)
    logits = (
        subspace.basis.T.to(model.W_U.device) @ model.W_U.float()
    )  # [k, d_vocab] (float32 for a bf16 model too)
    rows = []
    for j, label in enumerate(subspace.labels):
        for sign in (+1, -1):
            top = (sign * logits[j]).topk(n).indices.tolist()
            rows.append(
                {
                    "direction": label,
                    "sign": "+" if sign > 0 else "-",
                    "tokens": ", ".join(vocab.tokens[i] for i in top),
                }
            )
    return pd.DataFrame(rows)


def concept_scores(subspace: Subspace, concepts: dict[str, Subspace]) -> pd.DataFrame:
    """|cos| between each direction and each ground-truth concept direction at the same hook."""
    rows = []
    for j, label in enumerate(subspace.labels):
        row = {"hook": subspace.hook_name, "direction": label, "index": j}
        for name, c in concepts.items():
            if c.hook_name != subspace.hook_name:
                raise ValueError(f"concept {name!r} is at {c.hook_name!r}, not {subspace.hook_name!r}")
            row[name] = (subspace.basis[:, j] @ c.basis[:, 0]).abs().item()
        rows.append(row)
    return pd.DataFrame(rows)
