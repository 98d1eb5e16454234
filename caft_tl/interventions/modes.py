"""The intervention modes: one :class:`ModeSpec` per mode, in one registry chosen by name.

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

A new mode is one decorated function: ``@register_mode("name", needs_mean=..., scale=...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: f(h [..., d_model], Q [d_model, k], μ [d_model] | None, scale) -> new h
ModeFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", float], torch.Tensor]


@dataclass(frozen=True)
class ModeSpec:
    """Everything about one mode.

    ``needs_mean``: the mode reads the subspace's reference mean μ. ``scale``: the name of its
    setting as written in results tables (``k``, ``alpha``), or None when it takes none.

    Example:
        spec = MODES["detached"]
        new_h = spec.fn(h, q, None, 1.0)  # h: [batch, pos, d_model], q: [d_model, k]
    """

    name: str
    fn: ModeFn
    needs_mean: bool = False
    scale: str | None = None
    description: str = ""


#: mode name -> its spec
MODES: dict[str, ModeSpec] = {}


def register_mode(name: str, *, needs_mean: bool = False, scale: str | None = None, description: str = ""):
    """Decorator: register ``fn`` as mode ``name``; a name registered twice raises ValueError.

    Args:
        name: the mode's name, as :class:`~caft_tl.interventions.intervention.Intervention` takes it.
        needs_mean: the mode reads the subspace's reference mean μ.
        scale: the name of its setting in results tables (``k``, ``alpha``), or None.
        description: one line for tables and docs.

    Returns:
        The decorator, which registers and returns ``fn(h [..., d_model], Q [d_model, k], μ, scale)``.

    Example:
        @register_mode("half", description="remove half the projection")
        def half_ablate(h, q, mu, scale):
            return h - 0.5 * (h @ q) @ q.T
    """

    def deco(fn: ModeFn) -> ModeFn:
        if name in MODES:
            raise ValueError(f"intervention mode {name!r} is already registered")
        MODES[name] = ModeSpec(name, fn, needs_mean, scale, description)
        return fn

    return deco


def get_mode(name: str) -> ModeSpec:
    """The spec of mode ``name``; an unknown name raises a one-line ValueError naming the valid ones.

    Args:
        name: a registered mode.

    Returns:
        Its :class:`ModeSpec`.

    Example:
        get_mode("steer_mean").needs_mean  # True
    """
    if name not in MODES:
        raise ValueError(f"unknown intervention mode {name!r}; valid: {', '.join(MODES)}")
    return MODES[name]


def _proj(h: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (h @ q) @ q.T  # [..., d_model]


@register_mode("zero", description="remove the projection on the subspace")
def zero_ablate(h, q, mu, scale):
    return h - _proj(h, q)


@register_mode("mean", needs_mean=True, description="replace the projection by that of the reference mean")
def mean_ablate(h, q, mu, scale):
    return h - _proj(h - mu, q)


@register_mode("detached", description="remove the projection in the forward pass only; gradient unchanged")
def detached_ablate(h, q, mu, scale):
    return h - _proj(h, q).detach()


class _ProjectGradient(torch.autograd.Function):
    """Identity forward (bit-identical); backward projects the gradient by (I − Q Qᵀ).

    In the ``setup_context`` form with ``generate_vmap_rule``, so it also runs under
    ``torch.func.vmap`` (the batched fine-tunes of :mod:`caft_tl.training.batched`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(h, q):
        return h.view_as(h)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, grad):
        (q,) = ctx.saved_tensors
        return grad - _proj(grad, q), None


@register_mode("grad_only", description="identity forward; remove the subspace from the gradient only")
def grad_only_ablate(h, q, mu, scale):
    return _ProjectGradient.apply(h, q)


@register_mode(
    "steer_mean",
    needs_mean=True,
    scale="k",
    description="replace the projection by k × that of the reference mean",
)
def steer_mean(h, q, mu, scale):
    return h - _proj(h, q) + scale * _proj(mu, q)


@register_mode("add", scale="alpha", description="add α × the sum of the subspace's directions")
def add_vector(h, q, mu, scale):
    return h + scale * q.sum(-1)
