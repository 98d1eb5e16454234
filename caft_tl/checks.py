"""Checks on the base model with no training: what does an intervention do to the behaviour, and
where does the base model sit on each direction (the sign of its mean projection)?"""

from __future__ import annotations

import pandas as pd
import torch
from transformer_lens import HookedTransformer

from caft_tl.data import TokenDataset
from caft_tl.evaluate import behaviour_rate
from caft_tl.interpret import projections
from caft_tl.interventions import Intervention


def mean_projection(model: HookedTransformer, data: TokenDataset, intervention: Intervention, positions: str = "all") -> pd.DataFrame:
    """Mean (and std) projection of the activations on each direction of each subspace."""
    mask = data.position_mask(positions)
    rows = []
    for s in intervention.subspaces:
        proj = projections(model, data, s)[mask]  # [n_sel, k]
        for j, label in enumerate(s.labels):
            rows.append({"hook": s.hook_name, "direction": label, "mean_projection": proj[:, j].mean().item(),
                         "std": proj[:, j].std().item()})
    return pd.DataFrame(rows)


def ablation_check(model: HookedTransformer, task, intervention: Intervention, mode: str = "exact") -> pd.DataFrame:
    """Behaviour rate per prompt on every split with the intervention off and on (inference only).

    Columns: split, metric, condition (``off``/``on``), prompt, rate.
    """
    intervention.check(model)
    rows = []
    for split in task.eval_splits:
        prompts = task.eval_prompts(split)
        for cond, hooks in (("off", []), ("on", intervention.fwd_hooks(prompts))):
            rate = behaviour_rate(model, prompts, task, mode=mode, fwd_hooks=hooks)["rate"]
            rows += [{"split": split, "metric": task.metric(split), "condition": cond, "prompt": i, "rate": r}
                     for i, r in enumerate(rate.tolist())]
    return pd.DataFrame(rows)


def summarise_check(check: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% interval over prompts per split, direction set and condition (``off`` once)."""
    from caft_tl.stats import ci95

    rows = []
    off_done = set()
    for (directions, split, cond), g in check.groupby(["directions", "split", "condition"], sort=False):
        label = "none" if cond == "off" else f"zero · {directions}"
        if cond == "off":
            if split in off_done:
                continue
            off_done.add(split)
        m, lo, hi = ci95(g["rate"])
        rows.append({"split": split, "condition": label, "mean": m, "low": lo, "high": hi})
    return pd.DataFrame(rows)


def steering_verdict(summary: pd.DataFrame, task, split: str = "chat") -> pd.DataFrame:
    """Per direction set: does zero-ablation on the base model move the behaviour toward (↑),
    away from (↓), or not measurably (interval overlaps the unablated value)?"""
    s = summary[summary["split"] == split]
    off = s[s["condition"] == "none"].iloc[0]
    rows = []
    for r in s[s["condition"] != "none"].itertuples():
        if r.low > off["mean"]:
            verdict = f"toward {task.metric(split)}"
        elif r.high < off["mean"]:
            verdict = f"away from {task.metric(split)}"
        else:
            verdict = "no measurable change"
        rows.append({"intervention": r.condition, "split": split, "rate_off": off["mean"], "rate_on": r.mean,
                     "low": r.low, "high": r.high, "verdict": verdict})
    return pd.DataFrame(rows)
