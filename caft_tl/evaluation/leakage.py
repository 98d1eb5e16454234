"""Leakage after CAFT: does the CAFT-trained model route around the ablation?

CAFT ablates a subspace during training only and evaluates without the hook, so whatever the layers
upstream of a hook learn to write into the ablated subspace reaches the rest of the model at
evaluation. Diffing the CAFT model against the base (as chapter 02 diffs the plain fine-tune) says
how much of its change lands inside the ablated subspace (:func:`energy_share`), how far it moves along
the ground-truth concept directions at every hook (:func:`concept_shift`) and how much of the plain
fine-tune's concept shift it has recovered (:func:`recovered`); :func:`leakage_table` puts them in one
tidy table.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from caft_tl.core.subspace import Subspace
from caft_tl.diffing.diffs import MomentStats

#: the columns of :func:`leakage_table`, in order
COLUMNS = (
    "task",
    "organism",
    "method",
    "directions",
    "hook",
    "ablated",
    "concept",
    "diff_energy",
    "energy_in_subspace",
    "concept_shift",
    "recovered_share",
)


def energy_share(moments: MomentStats, subspace: Subspace) -> float:
    """The share of the diff's energy inside ``subspace``: ``tr(Qᵀ M Q) / tr(M)`` with ``M = E[δ δᵀ]``
    the uncentered second moment (so a constant shift counts), ``Q`` the subspace's basis.

    Args:
        moments: running moments of the diff ``δ = h_ft − h_base`` at one hook.
        subspace: the ablated subspace at that hook (orthonormal ``Q`` [d_model, k]).

    Returns:
        A share in [0, 1]; NaN when the diff is zero (no energy to share).

    Example:
        stats = collect_diff_stats(base, caft_model, data, [hook])[hook]["diff"]
        energy_share(stats, iv.subspaces[0])  # 1.0: every change inside the ablated subspace
    """
    m = moments.second_moment()  # [d_model, d_model], float64
    q = subspace.basis.to(torch.float64)  # [d_model, k]
    if q.shape[0] != m.shape[0]:
        raise ValueError(
            f"subspace at {subspace.hook_name!r} has d_model {q.shape[0]}; the diff has {m.shape[0]}"
        )
    total = m.trace().item()
    return (q.T @ m @ q).trace().item() / total if total > 0 else math.nan


def concept_shift(mean_diff: torch.Tensor, direction: Subspace | torch.Tensor) -> float:
    """The projection of the mean diff on the unit concept direction: how far the fine-tune moved the
    activations along the concept, on average (its sign follows the direction's).

    Args:
        mean_diff: ``E[h_ft − h_base]`` [d_model] at one hook.
        direction: a rank-1 :class:`Subspace` or a vector [d_model] (normalised here).

    Returns:
        ``E[δ] · v / ‖v‖``, in the residual stream's units.

    Example:
        concept_shift(stats.mean, world.concept_directions(base, [hook])[hook]["misaligned"])
    """
    v = direction.basis if isinstance(direction, Subspace) else direction
    if v.ndim == 2 and v.shape[1] != 1:
        raise ValueError(
            f"concept direction has rank {v.shape[1]}; expected one direction [d_model] or [d_model, 1]"
        )
    v = v.reshape(-1).to(torch.float64)
    if v.shape != mean_diff.shape:
        raise ValueError(
            f"concept direction has shape {tuple(v.shape)}; the mean diff {tuple(mean_diff.shape)}"
        )
    norm = v.norm()
    if norm == 0:
        raise ValueError("concept direction is zero; expected a non-zero vector")
    return (mean_diff.to(torch.float64) @ v / norm).item()


def recovered(plain_shift: float, caft_shift: float) -> float:
    """The share of the plain fine-tune's concept shift that the CAFT model shows too:
    ``caft_shift / plain_shift`` (1: all of it; 0: none; negative: the other way).

    Args:
        plain_shift: :func:`concept_shift` of the plain fine-tune at a hook.
        caft_shift: :func:`concept_shift` of the CAFT model at the same hook and direction.

    Returns:
        The ratio; NaN when the plain fine-tune did not move along the direction (``plain_shift`` 0). Where
        the plain shift is near zero (e.g. at ``blocks.0.hook_resid_pre``) the ratio is noise: read the
        two shifts themselves there.

    Example:
        recovered(0.8, 0.2)  # 0.25
    """
    return caft_shift / plain_shift if plain_shift != 0 else math.nan


def diffed_hooks(stream: list[str], subspaces: dict[str, list[Subspace]]) -> list[str]:
    """The hooks to diff: every hook of ``stream`` (e.g. :func:`caft_tl.core.models.residual_hooks`), then
    any hook a set ablates that is not among them.

    Args:
        stream: the model's hooks of the diffed kind, in the order of the forward pass.
        subspaces: ``{set name: [Subspace per ablated hook]}``.

    Returns:
        The hook names, without repeats.

    Example:
        diffed_hooks(residual_hooks(base), {"pca": iv.subspaces})
    """
    return list(dict.fromkeys(stream + [s.hook_name for subs in subspaces.values() for s in subs]))


def leakage_table(
    plain: dict[str, MomentStats],
    caft: dict[str, dict[str, MomentStats]],
    subspaces: dict[str, list[Subspace]],
    concepts: dict[str, dict[str, Subspace]] | None = None,
    task: str = "",
    organism: str = "",
) -> pd.DataFrame:
    """The leakage of each CAFT model, hook by hook, beside the plain fine-tune, as one tidy table.

    One row per direction set, method (``plain``, then ``zero``: the CAFT model), hook and concept:
    ``diff_energy`` (``E‖δ‖²``), ``energy_in_subspace`` (:func:`energy_share` in the set's ablated
    subspace at that hook; NaN where the set ablates nothing), ``concept_shift`` (:func:`concept_shift`
    on the ground-truth direction) and ``recovered_share`` (:func:`recovered`, CAFT rows only). Without
    ``concepts`` (a task with no ground truth) ``concept`` is empty and the concept columns are NaN.

    Args:
        plain: ``{hook: diff moments}`` of the plain fine-tune, at every hook to report (in order).
        caft: ``{set name: {hook: diff moments}}`` of each CAFT model, at the same hooks.
        subspaces: ``{set name: [Subspace per ablated hook]}`` of the interventions CAFT trained under.
        concepts: ``{hook: {concept: rank-1 Subspace}}`` (``HasGroundTruth.concept_directions``), or None.
        task: the task's name, for the ``task`` column.
        organism: the organism's id, for the ``organism`` column.

    Returns:
        A DataFrame with the columns :data:`COLUMNS`.

    Example:
        stats = {m: collect_diff_stats(base, m, data, hooks) for m in (ft, caft_pca)}
        leakage_table({h: s["diff"] for h, s in stats[ft].items()}, {"pca": {...}}, {"pca": iv.subspaces})
    """
    hooks = list(plain)
    if set(caft) != set(subspaces):
        raise ValueError(
            f"CAFT models of sets {sorted(caft)}; subspaces of sets {sorted(subspaces)}: expected the same"
        )
    for name, stats in caft.items():
        if list(stats) != hooks:
            raise ValueError(f"CAFT model {name!r} is diffed at {list(stats)}; the plain one at {hooks}")
        outside = [s.hook_name for s in subspaces[name] if s.hook_name not in hooks]
        if outside:
            raise ValueError(f"set {name!r} ablates {outside}, which are not diffed; diffed hooks: {hooks}")
    if concepts is not None and (missing := [h for h in hooks if h not in concepts]):
        raise ValueError(f"no concept directions at {missing}; expected one per diffed hook")
    names = list(dict.fromkeys(c for h in hooks for c in (concepts or {}).get(h, {}))) or [""]

    def shift(stats: MomentStats, hook: str, concept: str) -> float:
        return concept_shift(stats.mean, concepts[hook][concept]) if concepts else math.nan

    rows = []
    for name, stats in caft.items():
        ablated = {s.hook_name: s for s in subspaces[name]}
        for method, by_hook in (("plain", plain), ("zero", stats)):
            for hook in hooks:
                sub = ablated.get(hook)
                energy = by_hook[hook].second_moment().trace().item()
                share = energy_share(by_hook[hook], sub) if sub is not None else math.nan
                for concept in names:
                    value = shift(by_hook[hook], hook, concept)
                    rows.append(
                        {
                            "task": task,
                            "organism": organism,
                            "method": method,
                            "directions": name,
                            "hook": hook,
                            "ablated": sub is not None,
                            "concept": concept,
                            "diff_energy": energy,
                            "energy_in_subspace": share,
                            "concept_shift": value,
                            "recovered_share": (
                                recovered(shift(plain[hook], hook, concept), value)
                                if method == "zero" and concepts
                                else math.nan
                            ),
                        }
                    )
    return pd.DataFrame(rows, columns=list(COLUMNS))
