"""Activations of one model at TL hook points, batched, stopping the forward pass after the
last hooked block."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from caft_tl.core.data import TokenDataset
from caft_tl.core.models import check_fwd_hooks, check_hook_names

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


def _stop_layer(model: HookedTransformer, hooks: list[str]) -> int | None:
    """The first block no hook reads from (``stop_at_layer`` for the forward pass), or None.

    A hook inside ``blocks.i`` depends only on the embedding and blocks ``0..i``, so the blocks
    after the last hooked one (and the final norm and unembedding) need not run. None when a hook
    is outside the blocks (e.g. ``ln_final``).
    """
    layers = [re.match(r"blocks\.(\d+)\.", h) for h in hooks]
    if not all(layers):
        return None
    stop = max(int(m.group(1)) for m in layers) + 1
    return stop


def _cache(model: HookedTransformer, tokens: torch.Tensor, hooks: list[str]) -> dict[str, torch.Tensor]:
    _, cache = model.run_with_cache(
        tokens.to(model.cfg.device),
        names_filter=hooks,
        return_type=None,
        stop_at_layer=_stop_layer(model, hooks),
    )
    return {h: cache[h] for h in hooks}


@torch.inference_mode()
def activations(
    model: HookedTransformer, data: TokenDataset, hook: str, batch_size: int = 512, fwd_hooks=()
) -> torch.Tensor:
    """[n, pos, d_model] float32 activations at one hook (of a bf16 model too), for small datasets
    (interpretation, probes)."""
    check_hook_names(model, hook)
    fwd_hooks = check_fwd_hooks(model, fwd_hooks)
    out = []
    for batch in data.batches(batch_size):
        with model.hooks(fwd_hooks=list(fwd_hooks)):
            out.append(_cache(model, batch.tokens, [hook])[hook].to("cpu", torch.float32))
    return torch.cat(out)
