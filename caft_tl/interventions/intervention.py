"""The :class:`Intervention`: a mode (see :mod:`caft_tl.interventions.modes`) applied to one
subspace per hook point, as TransformerLens hook functions.

An :class:`Intervention` is data (mode, subspaces, positions, scale, on-at-eval) that saves to
JSON + safetensors, so a notebook, a sweep and a results table can all name it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from caft_tl.core import files
from caft_tl.core.data import POSITIONS, TokenDataset
from caft_tl.core.models import check_hook_names
from caft_tl.core.subspace import Subspace, load_subspaces, save_subspaces
from caft_tl.interventions.modes import ModeFn, ModeSpec, get_mode

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


@dataclass
class Intervention:
    """A mode applied to one subspace per hook point.

    ``scale`` is the mode's setting (its spec's ``scale``: k for ``steer_mean``, α for ``add``);
    ``on_at_eval`` says whether evaluation keeps it (CAFT evaluates without it).

    Args:
        mode: a registered mode (:data:`~caft_tl.interventions.modes.MODES`): ``zero`` (CAFT), ``mean``,
            ``detached`` (forward only), ``grad_only`` (gradient only), ``steer_mean``, ``add``.
        subspaces: one :class:`~caft_tl.core.subspace.Subspace` per hook point.
        positions: ``all``, ``prompt`` or ``response`` (the last two need the batch in :meth:`fwd_hooks`).
        scale: the mode's setting (k or α); ignored by modes without one.
        on_at_eval: keep the intervention when evaluating (:meth:`eval_hooks`).
        name: a display name; meta: anything to save beside it.

    Example:
        iv = Intervention("zero", [sub])
        with model.hooks(fwd_hooks=iv.fwd_hooks()):  # or: with iv.apply(model):
            loss = response_loss(model, batch)
    """

    mode: str
    subspaces: list[Subspace]
    positions: str = "all"
    scale: float = 1.0
    on_at_eval: bool = False
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = self.spec  # raises on an unknown mode
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown positions {self.positions!r}; valid: {', '.join(POSITIONS)}")
        if not self.subspaces:
            raise ValueError("an intervention needs at least one subspace")
        for s in self.subspaces:
            s.check_intact()
        hooks = [s.hook_name for s in self.subspaces]
        if len(set(hooks)) != len(hooks):
            raise ValueError(f"one subspace per hook point; got hooks {hooks}")
        if spec.needs_mean:
            for s in self.subspaces:
                if s.reference_mean is None:
                    raise ValueError(
                        f"mode {self.mode!r} needs a reference mean for {s.hook_name!r}; use "
                        "Subspace.with_mean(mu)"
                    )

    @property
    def spec(self) -> ModeSpec:
        """The mode's registry entry."""
        return get_mode(self.mode)

    @property
    def hook_names(self) -> list[str]:
        return [s.hook_name for s in self.subspaces]

    @property
    def param(self) -> str:
        """The mode's setting as written in results tables: ``k=-3``, ``alpha=4`` or empty."""
        scale = self.spec.scale
        return f"{scale}={self.scale:g}" if scale else ""

    @property
    def label(self) -> str:
        """Short display name, e.g. ``steer_mean k=-3``."""
        return f"{self.mode} {self.param}".strip()

    @property
    def rank(self) -> int:
        return sum(s.k for s in self.subspaces)

    def check(self, model: HookedTransformer) -> None:
        """Validate hook names and subspace widths against a model, before any work starts
        (the hook functions also refuse an activation of another width, in one line)."""
        check_hook_names(model, self.hook_names)
        for s in self.subspaces:
            s.check_intact().check_width(model.cfg.d_model)

    def fwd_hooks(self, batch: TokenDataset | None = None) -> list[tuple[str, Callable]]:
        """``(hook_name, fn)`` pairs for ``model.hooks``; ``batch`` gives the position mask."""
        mask = None
        if self.positions != "all":
            if batch is None:
                raise ValueError(f"positions={self.positions!r} needs the batch to build a position mask")
            mask = batch.position_mask(self.positions)  # [batch, pos]
        fn = self.spec.fn
        for s in self.subspaces:
            s.check_intact()
        return [
            (s.hook_name, partial(_hook, fn=fn, subspace=s, scale=self.scale, mask=mask))
            for s in self.subspaces
        ]

    @contextlib.contextmanager
    def apply(
        self, model: HookedTransformer, batch: TokenDataset | None = None
    ) -> Iterator[HookedTransformer]:
        """Context manager: ``model`` with this intervention's hooks on, removed on exit (even on error).

        The same as ``with model.hooks(fwd_hooks=iv.fwd_hooks(batch)):`` after :meth:`check`, so a
        wrong hook name or width fails in one line before the first forward pass.

        Args:
            model: a ``HookedTransformer`` or ``TransformerBridge`` with the subspaces' hook points.
            batch: the batch the model will run on; needed only when ``positions`` is not ``"all"``.

        Returns:
            A context manager yielding ``model``.

        Example:
            with Intervention("zero", [subspace]).apply(model):
                logits = model(tokens)  # [batch, pos, d_vocab], with the subspace ablated
        """
        self.check(model)
        with model.hooks(fwd_hooks=self.fwd_hooks(batch)):
            yield model

    def eval_hooks(self, batch: TokenDataset | None = None) -> list[tuple[str, Callable]]:
        """Hooks to keep during evaluation: the intervention's if ``on_at_eval``, else none."""
        return self.fwd_hooks(batch) if self.on_at_eval else []

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        save_subspaces(path / "subspaces", self.subspaces)
        files.write_json(
            path / "intervention.json",
            {
                "mode": self.mode,
                "positions": self.positions,
                "scale": self.scale,
                "on_at_eval": self.on_at_eval,
                "name": self.name,
                "meta": self.meta,
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Intervention:
        path = Path(path)
        cfg = files.read_json(path / "intervention.json")
        return cls(subspaces=load_subspaces(path / "subspaces"), **cfg)


def _hook(
    h: torch.Tensor, hook, fn: ModeFn, subspace: Subspace, scale: float, mask: torch.Tensor | None
) -> torch.Tensor:
    # h: [batch, pos, d_model] (or [batch, pos, n_heads, d_head] is not supported: use resid hooks)
    if h.shape[-1] != subspace.d_model:
        name = getattr(hook, "name", None) or subspace.hook_name
        raise ValueError(
            f"hook {name!r}: the subspace has width {subspace.d_model} but the activation has width "
            f"{h.shape[-1]} "
            f"(shape {tuple(h.shape)}); use a subspace made at this hook of this model"
        )
    q = subspace.basis.to(h.device, h.dtype)
    mu = subspace.reference_mean.to(h.device, h.dtype) if subspace.reference_mean is not None else None
    new = fn(h, q, mu, scale)
    if mask is not None:
        new = torch.where(mask.to(h.device)[..., None], new, h)
    return new
