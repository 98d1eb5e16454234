"""Interventions on a concept subspace, as TransformerLens hook functions.

``Q`` [d_model, k] orthonormal, ``P = Q Qᵀ``, ``μ`` the reference mean, ``sg`` stop-gradient:

=============  ==========================  ===================
mode           forward value               gradient upstream
=============  ==========================  ===================
``zero``       h − P h                     (I − P)
``mean``       h − P (h − μ)               (I − P)
``detached``   h − sg(P h)                 I
``grad_only``  h − P h + sg(P h)  (= h)    (I − P)
``steer_mean`` h − P h + k · P μ           (I − P)
``add``        h + α Σⱼ qⱼ                 I
=============  ==========================  ===================

An :class:`Intervention` is data (mode, subspaces, positions, scale, on-at-eval) that saves to
JSON + safetensors, so a notebook, a sweep and a results table can all name it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from transformer_lens import HookedTransformer

from caft_tl.core import files
from caft_tl.core.data import POSITIONS, TokenDataset
from caft_tl.core.models import check_hook_names
from caft_tl.core.subspace import Subspace, load_subspaces, save_subspaces

ModeFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", float], torch.Tensor]

#: mode name -> f(h [..., d_model], Q [d_model, k], μ [d_model] | None, scale) -> new h
MODES: dict[str, ModeFn] = {}
#: modes that need the reference mean μ
NEEDS_MEAN = {"mean", "steer_mean"}


def register_mode(name: str):
    def deco(fn: ModeFn) -> ModeFn:
        MODES[name] = fn
        return fn

    return deco


def _proj(h: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (h @ q) @ q.T  # [..., d_model]


@register_mode("zero")
def zero_ablate(h, q, mu, scale):
    return h - _proj(h, q)


@register_mode("mean")
def mean_ablate(h, q, mu, scale):
    return h - _proj(h - mu, q)


@register_mode("detached")
def detached_ablate(h, q, mu, scale):
    return h - _proj(h, q).detach()


class _ProjectGradient(torch.autograd.Function):
    """Identity forward (bit-identical); backward projects the gradient by (I − Q Qᵀ)."""

    @staticmethod
    def forward(ctx, h, q):
        ctx.save_for_backward(q)
        return h.view_as(h)

    @staticmethod
    def backward(ctx, grad):
        (q,) = ctx.saved_tensors
        return grad - _proj(grad, q), None


@register_mode("grad_only")
def grad_only_ablate(h, q, mu, scale):
    return _ProjectGradient.apply(h, q)


@register_mode("steer_mean")
def steer_mean(h, q, mu, scale):
    return h - _proj(h, q) + scale * _proj(mu, q)


@register_mode("add")
def add_vector(h, q, mu, scale):
    return h + scale * q.sum(-1)


@dataclass
class Intervention:
    """A mode applied to one subspace per hook point.

    ``scale`` is k for ``steer_mean`` and α for ``add``; ``on_at_eval`` says whether evaluation
    keeps it (CAFT evaluates without it).
    """

    mode: str
    subspaces: list[Subspace]
    positions: str = "all"
    scale: float = 1.0
    on_at_eval: bool = False
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown intervention mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown positions {self.positions!r}; valid: {', '.join(POSITIONS)}")
        if not self.subspaces:
            raise ValueError("an intervention needs at least one subspace")
        hooks = [s.hook_name for s in self.subspaces]
        if len(set(hooks)) != len(hooks):
            raise ValueError(f"one subspace per hook point; got hooks {hooks}")
        if self.mode in NEEDS_MEAN:
            for s in self.subspaces:
                if s.reference_mean is None:
                    raise ValueError(f"mode {self.mode!r} needs a reference mean for {s.hook_name!r}; set Subspace.reference_mean")

    @property
    def hook_names(self) -> list[str]:
        return [s.hook_name for s in self.subspaces]

    @property
    def param(self) -> str:
        """The mode's setting as written in results tables: ``k=-3``, ``alpha=4`` or empty."""
        return {"steer_mean": f"k={self.scale:g}", "add": f"alpha={self.scale:g}"}.get(self.mode, "")

    @property
    def label(self) -> str:
        """Short display name, e.g. ``steer_mean k=-3``."""
        return f"{self.mode} {self.param}".strip()

    @property
    def rank(self) -> int:
        return sum(s.k for s in self.subspaces)

    def check(self, model: HookedTransformer) -> None:
        """Validate hook names and subspace widths against a model, before any work starts."""
        check_hook_names(model, self.hook_names)
        for s in self.subspaces:
            s.check_width(model.cfg.d_model)

    def fwd_hooks(self, batch: TokenDataset | None = None) -> list[tuple[str, Callable]]:
        """``(hook_name, fn)`` pairs for ``model.hooks``; ``batch`` gives the position mask."""
        mask = None
        if self.positions != "all":
            if batch is None:
                raise ValueError(f"positions={self.positions!r} needs the batch to build a position mask")
            mask = batch.position_mask(self.positions)  # [batch, pos]
        fn = MODES[self.mode]
        return [(s.hook_name, partial(_hook, fn=fn, subspace=s, scale=self.scale, mask=mask)) for s in self.subspaces]

    def eval_hooks(self, batch: TokenDataset | None = None) -> list[tuple[str, Callable]]:
        """Hooks to keep during evaluation: the intervention's if ``on_at_eval``, else none."""
        return self.fwd_hooks(batch) if self.on_at_eval else []

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        save_subspaces(path / "subspaces", self.subspaces)
        files.write_json(path / "intervention.json", {
            "mode": self.mode, "positions": self.positions, "scale": self.scale,
            "on_at_eval": self.on_at_eval, "name": self.name, "meta": self.meta,
        })

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Intervention":
        path = Path(path)
        cfg = files.read_json(path / "intervention.json")
        return cls(subspaces=load_subspaces(path / "subspaces"), **cfg)


def _hook(h: torch.Tensor, hook, fn: ModeFn, subspace: Subspace, scale: float, mask: torch.Tensor | None) -> torch.Tensor:
    # h: [batch, pos, d_model] (or [batch, pos, n_heads, d_head] is not supported: use resid hooks)
    q = subspace.basis.to(h.device, h.dtype)
    mu = subspace.reference_mean.to(h.device, h.dtype) if subspace.reference_mean is not None else None
    new = fn(h, q, mu, scale)
    if mask is not None:
        new = torch.where(mask.to(h.device)[..., None], new, h)
    return new
