"""``Subspace``: an orthonormal basis at one TL hook point, with labels, provenance and the
reference mean μ — the unit every direction method makes and every intervention applies; the
simplest makers (difference of means, random) and saving/loading."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from caft_tl.core import files


@dataclass(frozen=True)
class Subspace:
    """An orthonormal basis ``Q`` [d_model, k] of a concept subspace at one TL hook point.

    ``reference_mean`` (μ, [d_model]) is the mean activation at the hook over a reference set
    (the base model on the training data); the mean-ablation and steering modes need it
    (:meth:`with_mean` gives a copy with μ set).

    A subspace is immutable and checked once, when it is made: it keeps its own copies of the
    caller's tensors, and assigning a field raises (``dataclasses.replace`` and :meth:`with_mean`
    make a new, re-checked subspace); an in-place edit of its own tensors is refused where an
    intervention takes it (:meth:`check_intact`). So a hook never applies a basis that is not orthonormal
    (tolerance 1e-4 on ``QᵀQ = I``) or a μ that is not a finite [d_model] vector.

    Args:
        hook_name: the TL hook point, e.g. ``"blocks.6.hook_resid_post"``.
        basis: ``Q`` [d_model, k], orthonormal columns (:func:`orthonormalize` makes them).
        labels: one name per direction (default ``<method>0``, ``<method>1``, ...).
        provenance: how it was made (saved beside it).
        reference_mean: μ [d_model], for the ``mean`` and ``steer_mean`` modes.

    Example:
        q = orthonormalize(torch.randn(768, 4))  # [768, 4]
        sub = Subspace("blocks.6.hook_resid_post", q).with_mean(mu)  # mu: [768]
    """

    hook_name: str
    basis: torch.Tensor  # [d_model, k]
    labels: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    reference_mean: torch.Tensor | None = None  # [d_model]

    def __post_init__(self) -> None:
        if not isinstance(self.hook_name, str) or not self.hook_name:
            raise ValueError(
                f"subspace hook name {self.hook_name!r} is not a hook name; e.g. 'blocks.0.hook_resid_post'"
            )
        if not isinstance(self.basis, torch.Tensor):
            raise TypeError(
                f"subspace basis at {self.hook_name!r} is {type(self.basis).__name__}; expected a "
                "torch.Tensor [d_model, k]"
            )
        if self.basis.ndim != 2 or self.basis.shape[1] == 0:
            raise ValueError(
                f"subspace at {self.hook_name!r} has shape {tuple(self.basis.shape)}; "
                "expected [d_model, k>=1]"
            )
        if not self.basis.is_floating_point():
            raise TypeError(
                f"subspace basis at {self.hook_name!r} has dtype {self.basis.dtype}; expected a "
                "floating-point tensor"
            )
        if not torch.isfinite(self.basis).all():
            raise ValueError(f"subspace at {self.hook_name!r} contains NaN or inf")
        gram = self.basis.T.double() @ self.basis.double()
        if not torch.allclose(gram, torch.eye(self.k, dtype=torch.float64, device=gram.device), atol=1e-4):
            raise ValueError(f"subspace basis at {self.hook_name!r} is not orthonormal; use orthonormalize()")
        mu = self.reference_mean
        if mu is not None:
            if not isinstance(mu, torch.Tensor):
                raise TypeError(
                    f"reference mean at {self.hook_name!r} is {type(mu).__name__}; expected a torch.Tensor "
                    "[d_model]"
                )
            if tuple(mu.shape) != (self.d_model,):
                raise ValueError(
                    f"reference mean at {self.hook_name!r} has shape {tuple(mu.shape)}; expected "
                    f"[{self.d_model}] (the basis's d_model)"
                )
            if not mu.is_floating_point() or not torch.isfinite(mu).all():
                raise ValueError(
                    f"reference mean at {self.hook_name!r} contains NaN or inf (or is not floating-point)"
                )
        labels = [str(x) for x in self.labels] or [
            f"{self.provenance.get('method', 'dir')}{i}" for i in range(self.k)
        ]
        if len(labels) != self.k:
            raise ValueError(
                f"subspace at {self.hook_name!r} has {self.k} directions but {len(labels)} labels"
            )
        # own copies: a caller's later in-place edit of its tensors cannot reach this subspace
        object.__setattr__(self, "basis", self.basis.detach().clone())
        object.__setattr__(self, "reference_mean", None if mu is None else mu.detach().clone())
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "provenance", dict(self.provenance))
        object.__setattr__(self, "_versions", self._tensor_versions())

    def __setstate__(self, state: dict) -> None:
        """Unpickled (a worker process, ``copy.deepcopy``): torch rebuilds the tensors in place, so the
        counters start again from the tensors as they arrive."""
        self.__dict__.update(state)
        object.__setattr__(self, "_versions", self._tensor_versions())

    def _tensor_versions(self) -> tuple[int, int]:
        """Torch's in-place-edit counters of the basis and μ (``mul_``, ``copy_``, ``[...] =`` bump them)."""
        mu = self.reference_mean
        return self.basis._version, -1 if mu is None else mu._version

    def check_intact(self) -> Subspace:
        """Refuse a subspace whose basis or μ was edited in place after it was checked (e.g.
        ``sub.basis.mul_(2)``) — every intervention calls this where it takes a subspace."""
        if self._tensor_versions() != self._versions:
            raise ValueError(
                f"the subspace at {self.hook_name!r} was edited in place after it was made "
                "(its basis or reference mean); a Subspace is immutable: make a new one, "
                "e.g. Subspace(hook, new_basis, ...) or with_mean(mu)"
            )
        return self

    def with_mean(self, reference_mean: torch.Tensor | None) -> Subspace:
        """A copy with reference mean μ (checked: a finite [d_model] vector)."""
        return dataclasses.replace(self, reference_mean=reference_mean)

    @property
    def d_model(self) -> int:
        return self.basis.shape[0]

    @property
    def k(self) -> int:
        return self.basis.shape[1]

    def select(self, idx: list[int]) -> Subspace:
        """The subspace spanned by some of the basis directions."""
        if not idx:
            raise ValueError(
                f"no directions selected at {self.hook_name!r}; choose at least one of 0..{self.k - 1}"
            )
        bad = [i for i in idx if not 0 <= i < self.k]
        if bad:
            raise ValueError(f"direction indices {bad} out of range 0..{self.k - 1} at {self.hook_name!r}")
        return Subspace(
            self.hook_name,
            self.basis[:, idx],
            [self.labels[i] for i in idx],
            {**self.provenance, "selected": list(idx)},
            self.reference_mean,
        )

    def check_width(self, d_model: int) -> None:
        if self.d_model != d_model:
            raise ValueError(
                f"subspace at {self.hook_name!r} has width {self.d_model}, but the model's d_model is "
                f"{d_model}"
            )


def orthonormalize(vectors: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """[d_model, m] → orthonormal [d_model, k ≤ m] spanning the same space (drops null directions).

    Args:
        vectors: [d_model, m] directions as columns.
        tol: singular values below ``tol`` × the largest are dropped.

    Returns:
        [d_model, k] float32 with orthonormal columns.

    Example:
        q = orthonormalize(torch.stack([v1, v2], dim=1))  # v1, v2: [d_model]
    """
    u, s, _ = torch.linalg.svd(vectors.double(), full_matrices=False)
    keep = s > tol * max(s.max().item(), 1e-30)
    return u[:, keep].float()


def diff_of_means(
    pos: torch.Tensor, neg: torch.Tensor, hook_name: str, label: str = "diff_means"
) -> Subspace:
    """Rank-1 subspace along mean(pos) − mean(neg).

    Args:
        pos: [n, d_model] activations of examples with the concept.
        neg: [m, d_model] activations of examples without it.
        hook_name: the hook point they were read at.
        label: the direction's label.

    Returns:
        A :class:`Subspace` with k = 1.

    Example:
        sub = diff_of_means(acts[is_harmful], acts[~is_harmful], "blocks.6.hook_resid_post")
    """
    v = pos.float().mean(0) - neg.float().mean(0)
    if v.norm() == 0:
        raise ValueError(f"difference of means at {hook_name!r} is zero")
    return Subspace(
        hook_name, (v / v.norm())[:, None], [label], {"method": "diff_means", "norm": v.norm().item()}
    )


def random_subspace(d_model: int, k: int, hook_name: str, seed: int = 0) -> Subspace:
    """A uniformly random k-dimensional subspace (Gaussian matrix, orthonormalised): the null baseline.

    Args:
        d_model: the residual width.
        k: the number of directions.
        hook_name: the hook point.
        seed: the generator's seed.

    Returns:
        A :class:`Subspace` [d_model, k].

    Example:
        null = [random_subspace(768, 4, "blocks.6.hook_resid_post", seed=i) for i in range(20)]
    """
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d_model, k, generator=g))
    return Subspace(hook_name, q, [f"rand{i}" for i in range(k)], {"method": "random", "seed": seed})


def save_subspaces(path: str | os.PathLike, subspaces: list[Subspace]) -> None:
    """Save subspaces atomically: one safetensors file (bases, means) and one JSON file (hooks, labels,
    provenance).

    Args:
        path: the files' path without suffix (``.safetensors`` and ``.json`` are added).
        subspaces: the subspaces, at any hooks.

    Returns:
        None.

    Example:
        save_subspaces("runs/mine/subspaces/pca", [sub])
    """
    path = Path(path)
    tensors, meta = {}, []
    for i, s in enumerate(subspaces):
        tensors[f"{i}.basis"] = s.basis
        if s.reference_mean is not None:
            tensors[f"{i}.reference_mean"] = s.reference_mean
        meta.append({"hook_name": s.hook_name, "labels": s.labels, "provenance": s.provenance})
    files.write_tensors(path.with_suffix(".safetensors"), tensors)
    files.write_json(path.with_suffix(".json"), meta)


def load_subspaces(path: str | os.PathLike) -> list[Subspace]:
    """The subspaces :func:`save_subspaces` wrote (checked again as they are made).

    Args:
        path: the path given to :func:`save_subspaces`.

    Returns:
        The list of :class:`Subspace`, in the saved order.

    Example:
        subs = load_subspaces("runs/mine/subspaces/pca")
    """
    path = Path(path)
    meta = files.read_json(path.with_suffix(".json"))
    t = files.read_tensors(path.with_suffix(".safetensors"))
    return [
        Subspace(m["hook_name"], t[f"{i}.basis"], m["labels"], m["provenance"], t.get(f"{i}.reference_mean"))
        for i, m in enumerate(meta)
    ]
