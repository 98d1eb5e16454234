"""Token displays: circuitsvis coloured-token views of the top examples of each direction or SAE
latent, as in the TransformerLens and SAELens demos.

Views always carry circuitsvis's bundled JavaScript inline — in a notebook and in HTML files
written to disk — so they render offline and never load from a CDN.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from circuitsvis.utils.render import render_local

from caft_tl.core import files
from caft_tl.core.data import TokenDataset
from caft_tl.core.subspace import Subspace
from caft_tl.directions.interpret import projections, top_contexts

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


class TokenView:
    """A rendered circuitsvis view (HTML with the bundle inline); shows itself in Jupyter."""

    def __init__(self, body: str, title: str = ""):
        self.body, self.title = body, title

    def _repr_html_(self) -> str:
        return self.body

    def save(self, path: str | os.PathLike) -> Path:
        """Write a standalone HTML page (atomically); it needs no network to render."""
        page = (
            f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title></head>\n"
            f"<body>\n<h3>{html.escape(self.title)}</h3>\n{self.body}\n</body></html>\n"
        )
        with files.atomic_write(path) as f:
            f.write(page)
        return Path(path)


def top_samples(
    values: torch.Tensor,
    data: TokenDataset,
    labels: list[str],
    vocab,
    n: int = 5,
    positions: str = "all",
    signs=(+1, -1),
) -> tuple[list, list]:
    """Tokens and per-token values of the top-``n`` distinct contexts (as
    :func:`caft_tl.directions.interpret.top_contexts`) of each column of ``values`` [n_ex, pos, k], nested
    ``[label][sign][example][token]``; values are multiplied by the sign, so the strongest
    example of either sign is the most coloured."""
    examples = top_contexts(values, data, labels, vocab, n, positions, signs)
    tokens, acts = [], []
    for j, label in enumerate(labels):
        tokens.append([])
        acts.append([])
        for sign in signs:
            g = examples[
                (examples["direction"] == label) & (examples["sign"] == ("+" if sign > 0 else "-"))
            ].sort_values("rank")
            tokens[-1].append(
                [vocab.to_str_tokens(data.tokens[i, : t + 1]) for i, t in zip(g["example"], g["position"])]
            )
            acts[-1].append(
                [(sign * values[i, : t + 1, j]).tolist() for i, t in zip(g["example"], g["position"])]
            )
    return tokens, acts


def top_examples_view(
    values: torch.Tensor,
    data: TokenDataset,
    labels: list[str],
    vocab,
    n: int = 5,
    positions: str = "all",
    signs=(+1, -1),
    name: str = "direction",
    title: str = "",
) -> TokenView:
    """circuitsvis ``TopkSamples``: pick a ``name`` (direction / latent) and a sign, see its top
    contexts with every token coloured by its value (negated for the − sign)."""
    tokens, acts = top_samples(values, data, labels, vocab, n, positions, signs)
    body = render_local(
        "TopkSamples",
        tokens=tokens,
        activations=acts,
        zerothDimensionName=name.capitalize(),
        firstDimensionName="Sign",
        zerothDimensionLabels=labels,
        firstDimensionLabels=["+" if s > 0 else "− (negated)" for s in signs],
    )
    return TokenView(body, title)


def direction_view(
    model: HookedTransformer,
    data: TokenDataset,
    subspace: Subspace,
    vocab,
    n: int = 5,
    positions: str = "all",
) -> TokenView:
    """Top examples of each direction of ``subspace``, both signs, coloured by the projection."""
    return top_examples_view(
        projections(model, data, subspace),
        data,
        subspace.labels,
        vocab,
        n,
        positions,
        title=f"top examples of the directions at {subspace.hook_name}",
    )


def latent_view(
    model: HookedTransformer, data: TokenDataset, sae, latents: list[int], vocab, n: int = 5
) -> TokenView:
    """Top examples of each SAE latent, coloured by its activation."""
    from caft_tl.directions.sae import latent_activations

    return top_examples_view(
        latent_activations(model, data, sae, latents),
        data,
        [f"L{i}" for i in latents],
        vocab,
        n,
        signs=(+1,),
        name="latent",
        title=f"top examples of SAE latents at {sae.cfg.metadata.hook_name}",
    )
