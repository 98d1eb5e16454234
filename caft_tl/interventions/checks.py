"""Checks on the base model with no training.

1. *Steering check*: the behaviour with each intervention applied at inference (zero, mean,
   ± k × mean projection, added vector), against no intervention, with intervals over prompts.
2. *Latent check*: does an intervention raise or lower the concept latents (here the organism's
   ground-truth concept probes) downstream of its hook?
3. Where the base model sits on each direction: the sign of its mean projection says which way
   zero-ablation pushes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import pandas as pd
from transformer_lens import HookedTransformer

from caft_tl.core import results
from caft_tl.core.activations import activations
from caft_tl.core.data import TokenDataset
from caft_tl.core.models import check_hook_names
from caft_tl.core.stats import RATE_BOUNDS, ci95
from caft_tl.core.subspace import Subspace
from caft_tl.directions.interpret import projections
from caft_tl.interventions.intervention import Intervention
from caft_tl.interventions.modes import get_mode
from caft_tl.organism.judge import behaviour_rate

NONE = "none"


def mode_grid(
    template: Intervention, modes: list[str], values: Mapping[str, Sequence[float]]
) -> dict[str, Intervention]:
    """The settings of a steering check, keyed by label: a mode without a scale once, a mode with
    one at each of ``values[scale]`` (e.g. ``{"k": [-3, 3], "alpha": [4.0]}``).

    Args:
        template: the intervention whose subspaces, positions and flags every setting shares.
        modes: registered mode names.
        values: each scale's values, by the scale's name (``k``, ``alpha``).

    Returns:
        ``{label: Intervention}``, e.g. ``{"mean": ..., "steer_mean k=-3": ..., "steer_mean k=3": ...}``.

    Example:
        grid = mode_grid(Intervention("zero", [sub.with_mean(mu)]), ["mean", "steer_mean"], {"k": [-3, 3]})
    """
    out = {}
    for mode in modes:
        scale = get_mode(mode).scale
        if scale is not None and scale not in values:
            raise ValueError(f"mode {mode!r} takes {scale} values; pass values={{{scale!r}: [...]}}")
        for s in values[scale] if scale is not None else [1.0]:
            iv = dataclasses.replace(template, mode=mode, scale=float(s))
            out[iv.label] = iv
    return out


def behaviour_under(
    model: HookedTransformer, task, interventions: dict[str, Intervention], mode: str = "exact"
) -> pd.DataFrame:
    """Behaviour rate per prompt on every split, with no intervention (``none``) and with each one.

    Columns: condition, split, metric, prompt, rate.
    """
    for iv in interventions.values():
        iv.check(model)
    rows = []
    for split in task.eval_splits:
        prompts = task.eval_prompts(split)
        conditions = [(NONE, [])] + [(name, iv.fwd_hooks(prompts)) for name, iv in interventions.items()]
        for cond, hooks in conditions:
            rate = behaviour_rate(model, prompts, task, mode=mode, fwd_hooks=hooks)["rate"]
            rows += [
                {"condition": cond, "split": split, "metric": task.metric(split), "prompt": i, "rate": r}
                for i, r in enumerate(rate.tolist())
            ]
    return pd.DataFrame(rows)


def summarise_check(check: pd.DataFrame, value: str = "rate", by=("condition", "split")) -> pd.DataFrame:
    """Mean and 95% interval over prompts (or examples) per condition and split."""
    rows = []
    for key, g in check.groupby(list(by), sort=False):
        m, lo, hi = ci95(
            g[value], RATE_BOUNDS if value == "rate" else None
        )  # a rate's interval stays in [0, 1]
        rows.append({**dict(zip(by, key)), "mean": m, "low": lo, "high": hi})
    return pd.DataFrame(rows)


def steering_verdict(summary: pd.DataFrame, task, split: str = "chat") -> pd.DataFrame:
    """Per condition: does it move the behaviour toward (interval above the unintervened rate),
    away from (below), or not measurably (interval contains it)?"""
    s = summary[summary["split"] == split]
    off = s[s["condition"] == NONE]["mean"].item()
    rows = []
    for r in s[s["condition"] != NONE].itertuples():
        verdict = "toward" if r.low > off else "away from" if r.high < off else "no measurable change in"
        rows.append(
            {
                "condition": r.condition,
                "split": split,
                "rate_without": off,
                "rate_with": r.mean,
                "low": r.low,
                "high": r.high,
                "verdict": f"{verdict} {task.metric(split)}",
            }
        )
    return pd.DataFrame(rows)


def mean_projection(
    model: HookedTransformer, data: TokenDataset, intervention: Intervention, positions: str = "all"
) -> pd.DataFrame:
    """Mean (and std) projection of the activations on each direction of each subspace: its sign
    says which way zero-ablation pushes the model.

    Args:
        model: the model (usually the untrained base).
        data: the tokens to read.
        intervention: its subspaces are the directions read.
        positions: ``all``, ``prompt`` or ``response``.

    Returns:
        A DataFrame with columns hook, direction, mean_projection, std.

    Example:
        mean_projection(base, data, Intervention("zero", [sub]))
    """
    intervention.check(model)
    mask = data.position_mask(positions)
    rows = []
    for s in intervention.subspaces:
        proj = projections(model, data, s)[mask]  # [n_sel, k]
        for j, name in enumerate(s.labels):
            rows.append(
                {
                    "hook": s.hook_name,
                    "direction": name,
                    "mean_projection": proj[:, j].mean().item(),
                    "std": proj[:, j].std().item(),
                }
            )
    return pd.DataFrame(rows)


def latent_check(
    model: HookedTransformer,
    data: TokenDataset,
    interventions: dict[str, Intervention],
    probes: list[Subspace],
    positions: str = "response",
) -> pd.DataFrame:
    """Activation of each concept probe (a rank-1 ``Subspace`` at a hook downstream of the
    interventions) per example, with no intervention and with each one.

    Columns: condition, probe, hook, example, activation (mean over the selected positions).
    """
    for iv in interventions.values():
        iv.check(model)
    for probe in probes:
        check_hook_names(model, probe.hook_name)
        probe.check_width(model.cfg.d_model)
    mask = data.position_mask(positions)  # [n, pos]
    rows = []
    conditions = [(NONE, None)] + list(interventions.items())
    for cond, iv in conditions:
        hooks = iv.fwd_hooks(data) if iv is not None else []
        for probe in probes:
            if probe.k != 1:
                raise ValueError(
                    f"probe {probe.labels} at {probe.hook_name!r} has rank {probe.k}; use one direction per "
                    "probe"
                )
            act = activations(model, data, probe.hook_name, fwd_hooks=hooks) @ probe.basis[:, 0]  # [n, pos]
            per_example = (act * mask).sum(1) / mask.sum(1).clamp_min(1)  # [n]
            rows += [
                {
                    "condition": cond,
                    "probe": probe.labels[0],
                    "hook": probe.hook_name,
                    "example": i,
                    "activation": a,
                }
                for i, a in enumerate(per_example.tolist())
            ]
    return pd.DataFrame(rows)


def result_rows(
    summary: pd.DataFrame, interventions: dict[str, Intervention], task_name: str, organism: str, metric_of
) -> list[dict]:
    """Results-table rows of a base-model check (``trained`` false), one per summarised condition
    other than ``none``: ``directions`` is the intervention's ``name`` (its direction set), ``param``
    the mode's setting; ``metric_of(row)`` names the metric of a summary row."""
    rows = []
    for r in summary[summary["condition"] != NONE].itertuples():
        iv = interventions[r.condition]
        key = results.RowKey(task_name, organism, iv.mode, iv.name or "custom", iv.param, trained=False)
        rows += results.rows(key, {getattr(r, "split", "finetune_data"): {metric_of(r): r.mean}})
    return rows


def baseline_rows(summary: pd.DataFrame, task_name: str, organism: str, metric_of) -> list[dict]:
    """Results-table rows of a check's ``none`` condition (the base model without intervention):
    method ``base``, directions ``none``, untrained — what each condition's rows are compared with."""
    rows = []
    for r in summary[summary["condition"] == NONE].itertuples():
        key = results.RowKey(task_name, organism, "base", "none", trained=False)
        rows += results.rows(key, {getattr(r, "split", "finetune_data"): {metric_of(r): r.mean}})
    return rows


def projection_rows(projections: pd.DataFrame, task_name: str, organism: str) -> list[dict]:
    """Results-table rows of :func:`mean_projection` tables (with ``directions`` and ``data``
    columns): method ``base``, untrained, ``directions`` = ``<set>/<hook>/<direction>``."""
    return [
        row
        for r in projections.itertuples()
        for row in results.rows(
            results.RowKey(
                task_name, organism, "base", f"{r.directions}/{r.hook}/{r.direction}", trained=False
            ),
            {r.data: {"mean_projection": r.mean_projection}},
        )
    ]


def sae_latent_check(
    model: HookedTransformer,
    data: TokenDataset,
    interventions: dict[str, Intervention],
    saes: dict,
    latents: dict[str, list[int]],
    positions: str = "response",
) -> pd.DataFrame:
    """Activation of chosen SAE latents (``latents[hook]`` of ``saes[hook]``) per example, with no
    intervention and with each one: does the intervention raise or lower the "concept" latents?

    Columns as :func:`latent_check` (``probe`` is ``<hook> L<id>``).
    """
    from caft_tl.directions.sae import latent_activations

    mask = data.position_mask(positions)  # [n, pos]
    rows = []
    for cond, iv in [(NONE, None)] + list(interventions.items()):
        hooks = iv.fwd_hooks(data) if iv is not None else []
        for hook, ids in latents.items():
            act = latent_activations(model, data, saes[hook], ids, fwd_hooks=hooks)  # [n, pos, m]
            per_example = (act * mask[..., None]).sum(1) / mask.sum(1).clamp_min(1)[:, None]  # [n, m]
            short = hook.removeprefix("blocks.").replace(".hook_", " ")
            rows += [
                {"condition": cond, "probe": f"{short} L{i}", "hook": hook, "example": e, "activation": a}
                for j, i in enumerate(ids)
                for e, a in enumerate(per_example[:, j].tolist())
            ]
    return pd.DataFrame(rows)
