"""The training-time monitor: how much of some chosen subspaces the activations carry while a model
fine-tunes (does the model route around an ablation?).

At every hook point of its subspaces a *reading* hook, placed before any intervention edits the
activation, records for every subspace ``Q`` (orthonormal ``[d_model, k]``) the mean over response
positions of ``‖Qᵀ x‖ = ‖P x‖``. At the subspace's own hook that is what the model writes into it
(what an ablation then removes: ``written``); at the monitor's other hooks it is the activation's
projection on those directions there (``other_hooks``). Readings come from the training forward pass
itself, detached, every ``every`` steps: no extra forward, no change to any training number.

:class:`Monitor` is the setting (a job's ``monitor``), :class:`MonitorLog` the readings of one run
(on the one-at-a-time loop), :class:`StackedMonitor` the readings of R stacked runs (the batched path).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd
import torch

from caft_tl.core.data import TokenDataset
from caft_tl.core.models import check_hook_names
from caft_tl.core.subspace import Subspace

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


@dataclass(frozen=True)
class Monitor:
    """What to read during a fine-tune: ``‖P x‖`` of each subspace at each of their hooks, every
    ``every`` steps (steps 0, every, 2·every, …).

    Args:
        subspaces: one :class:`~caft_tl.core.subspace.Subspace` per hook point (e.g. a direction set's).
        every: optimiser steps between readings (a positive int).

    Example:
        job = FinetuneJob(cfg, "zero", "pca", "", iv, monitor=Monitor(iv.subspaces, every=10))
    """

    subspaces: list[Subspace]
    every: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(
                f"monitor every = {self.every!r}; expected a positive int (optimiser steps between readings)"
            )
        if not self.subspaces:
            raise ValueError("a monitor needs at least one subspace")
        hooks = [s.check_intact().hook_name for s in self.subspaces]
        if len(set(hooks)) != len(hooks):
            raise ValueError(f"a monitor reads one subspace per hook point; got hooks {hooks}")

    @property
    def hook_names(self) -> list[str]:
        return [s.hook_name for s in self.subspaces]

    def check(self, model: HookedTransformer) -> None:
        """Validate hook names and widths against ``model`` before any work (one-line errors)."""
        check_hook_names(model, self.hook_names)
        for s in self.subspaces:
            s.check_width(model.cfg.d_model)

    def fingerprint(self) -> str:
        """A short hash of the setting (every, hooks, bases): part of a cached run's config."""
        h = hashlib.sha256(f"every={self.every}".encode())
        for s in self.subspaces:
            h.update(s.hook_name.encode())
            h.update(s.basis.float().contiguous().numpy().tobytes())
        return h.hexdigest()[:12]

    def due(self, step: int) -> bool:
        """Whether step ``step`` (0-based) is read."""
        return step % self.every == 0

    def readings(self, steps: list[int], values: list[list[list[float]]]) -> dict:
        """The JSON record of a run: ``{"every", "steps", "subspaces": {hook: {"written": [..],
        "other_hooks": {hook': [..]}}}}`` from ``values[step][subspace][hook]``."""
        hooks = self.hook_names
        out: dict = {"every": self.every, "steps": list(steps), "subspaces": {}}
        for a, name in enumerate(hooks):
            out["subspaces"][name] = {
                "written": [v[a][a] for v in values],
                "other_hooks": {
                    b_name: [v[a][b] for v in values] for b, b_name in enumerate(hooks) if b != a
                },
            }
        return out


def _basis(subspaces: list[Subspace]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every subspace's basis side by side ``[d_model, K]`` and the one-hot of their columns ``[K, A]``."""
    q = torch.cat([s.basis.float() for s in subspaces], 1)
    owner = torch.cat([torch.full((s.k,), a) for a, s in enumerate(subspaces)])
    return q, torch.nn.functional.one_hot(owner, len(subspaces)).float()


def projection_norms(x: torch.Tensor, q: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """``‖Q_aᵀ x‖`` for every subspace ``a``: ``x [..., d_model]``, ``q [..., d_model, K]`` (the bases
    side by side), ``onehot [..., K, A]`` → ``[..., A]``; batched over leading dimensions."""
    return torch.matmul(torch.matmul(x, q).square(), onehot).sqrt()


@dataclass
class MonitorLog:
    """The readings of one run on :func:`caft_tl.training.loop.finetune`.

    Per read step: :meth:`open`, a forward pass per micro-batch under :meth:`hooks`, then :meth:`close`.

    Example:
        log = MonitorLog(Monitor(subspaces))
        finetune(model, data, cfg, intervention, monitor=log)
        record = log.series()  # {"every", "steps", "subspaces": {...}}
    """

    monitor: Monitor
    steps: list[int] = field(default_factory=list)
    values: list[list[list[float]]] = field(default_factory=list)  # [step][subspace][hook]

    def __post_init__(self) -> None:
        self._q, self._onehot = _basis(self.monitor.subspaces)
        self._sum: torch.Tensor | None = None  # [A, H] sum over response positions of this step
        self._count = 0

    def open(self) -> None:
        """Start (or restart, after an out-of-memory retry) the readings of one step."""
        self._sum, self._count = None, 0

    def hooks(self, batch: TokenDataset) -> list[tuple[str, Callable]]:
        """Reading hooks for one forward pass over ``batch`` (put them before any intervention's)."""
        mask = batch.position_mask("response")  # [batch, pos]
        self._count += int(mask.sum())
        return [(name, self._reader(j, mask)) for j, name in enumerate(self.monitor.hook_names)]

    def _reader(self, j: int, mask: torch.Tensor) -> Callable:
        n = len(self.monitor.subspaces)

        def read(x: torch.Tensor, hook=None) -> None:  # x: [batch, pos, d_model]
            with torch.no_grad():
                x = x.detach().float()
                norms = projection_norms(x, self._q.to(x.device), self._onehot.to(x.device))  # [b, p, A]
                if self._sum is None:
                    self._sum = torch.zeros(n, n, device=x.device)  # [subspace, hook]
                self._sum[:, j] += (norms * mask.to(x.device)[..., None]).sum((0, 1))

        return read

    def close(self, step: int) -> None:
        """Record step ``step``: the mean over its response positions."""
        if self._sum is None:
            raise RuntimeError("MonitorLog.close without a forward pass under its hooks")
        self.steps.append(step)
        self.values.append((self._sum / max(self._count, 1)).cpu().tolist())
        self._sum = None

    def series(self) -> dict:
        """The run's JSON record (:meth:`Monitor.readings`)."""
        return self.monitor.readings(self.steps, self.values)

    def state(self) -> dict:
        """The readings so far, JSON-able (a checkpoint's)."""
        return {"steps": self.steps, "values": self.values}

    def load(self, state: dict) -> None:
        self.steps, self.values = list(state["steps"]), list(state["values"])


class StackedMonitor:
    """The readings of R stacked runs (:func:`caft_tl.training.batched.finetune_batched`), each with
    its own :class:`Monitor` or None: ``values [R, S, A_max, H]`` over the union ``H`` of their hooks,
    bases padded with zero columns (which add nothing to a norm)."""

    def __init__(self, monitors: list[Monitor | None], n_steps: int, d_model: int, device):
        self.monitors = monitors
        self.R = len(monitors)
        self.hooks = list(dict.fromkeys(h for m in monitors if m is not None for h in m.hook_names))
        A = max(len(m.subspaces) for m in monitors if m is not None)
        K = max(sum(s.k for s in m.subspaces) for m in monitors if m is not None)
        q = torch.zeros(self.R, d_model, K)
        onehot = torch.zeros(self.R, K, A)
        for r, m in enumerate(monitors):
            if m is not None:
                qr, oh = _basis(m.subspaces)
                q[r, :, : qr.shape[1]], onehot[r, : oh.shape[0], : oh.shape[1]] = qr, oh
        self.q, self.onehot = q.to(device), onehot.to(device)
        self.values = torch.full((self.R, n_steps, A, len(self.hooks)), float("nan"), device=device)

    def due(self, step: int, k: int) -> bool:
        """Whether any of the first ``k`` members reads at ``step``."""
        return any(m is not None and m.due(step) for m in self.monitors[:k])

    def fwd_hooks(self, target_mask: torch.Tensor, step: int) -> dict[str, Callable]:
        """Reading hooks for :func:`~caft_tl.training.batched.stacked_forward` on a batch with
        ``target_mask [k, B, T]`` (the first ``k`` members' response positions); each returns ``h``."""
        k = target_mask.shape[0]
        mask = target_mask.flatten(1).float()  # [k, B T]
        count = mask.sum(1).clamp(min=1)[:, None]  # [k, 1]

        def read(h: torch.Tensor, j: int) -> torch.Tensor:  # h: [k, B, T, d_model]
            with torch.no_grad():
                x = h.detach().float().flatten(1, 2)  # [k, B T, d]
                norms = projection_norms(x, self.q[:k], self.onehot[:k])  # [k, B T, A]
                self.values[:k, step, :, j] = torch.bmm(mask[:, None], norms)[:, 0] / count
            return h

        return {name: (lambda h, j=j: read(h, j)) for j, name in enumerate(self.hooks)}

    def state(self, r: int, n_steps: int) -> dict:
        """Member ``r``'s readings over its ``n_steps`` steps, as :meth:`MonitorLog.state` writes them."""
        m = self.monitors[r]
        if m is None:
            raise ValueError(f"member {r} has no monitor")
        steps = [s for s in range(n_steps) if m.due(s)]
        cols = [self.hooks.index(h) for h in m.hook_names]
        v = self.values[r][steps][:, : len(m.subspaces)][:, :, cols]  # [steps, subspace, hook]
        return {"steps": steps, "values": v.cpu().tolist()}


def chain(first: dict[str, Callable], then: dict[str, Callable] | None) -> dict[str, Callable]:
    """Stacked hooks that run ``first[name]`` and then ``then[name]`` at each point (either may lack it)."""
    then = then or {}
    out = dict(then)
    for name, fn in first.items():
        out[name] = fn if name not in then else (lambda h, f=fn, g=then[name]: g(f(h)))
    return out


def monitor_frame(records: dict[str, list[dict]]) -> pd.DataFrame:
    """Monitor records (:meth:`Monitor.readings`) as one long table.

    Args:
        records: label (e.g. ``plain``, ``zero``) → the records of its runs (one per seed).

    Returns:
        Columns ``label, run, subspace, at, step, norm`` (``at`` the hook read; ``at == subspace``
        is what the model writes into the subspace).

    Example:
        monitor_frame({"zero": [record]}).query("at == subspace")
    """
    rows = []
    for label, recs in records.items():
        for run, rec in enumerate(recs):
            for sub, reading in rec["subspaces"].items():
                series = {sub: reading["written"], **reading["other_hooks"]}
                for at, values in series.items():
                    rows += [(label, run, sub, at, s, v) for s, v in zip(rec["steps"], values)]
    return pd.DataFrame(rows, columns=["label", "run", "subspace", "at", "step", "norm"])
