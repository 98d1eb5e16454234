"""Confidence intervals over seeds (or prompts) for results tables. No torch import: cheap to load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.stats


def ci95(values) -> tuple[float, float, float]:
    """(mean, low, high): Student-t 95% interval of the mean; a single value has zero width."""
    v = np.asarray(list(values), dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return (float("nan"),) * 3
    m = float(v.mean())
    if len(v) == 1:
        return m, m, m
    half = float(scipy.stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - half, m + half


def summarise(df: pd.DataFrame, by=("task", "organism", "method", "directions", "param", "trained", "split", "metric")) -> pd.DataFrame:
    """Mean and 95% interval over seeds for each group of a results table (by default: per organism
    and configuration)."""
    out = []
    for key, g in df.groupby(list(by), dropna=False, sort=False):
        m, lo, hi = ci95(g["value"])
        out.append({**dict(zip(by, key)), "mean": m, "low": lo, "high": hi, "n_seeds": len(g)})
    return pd.DataFrame(out)


def share_removed(summary: pd.DataFrame, split: str) -> pd.DataFrame:
    """For each configuration: the share of plain fine-tuning's change on ``split`` (plain − base)
    that it removes, ``(plain − x) / (plain − base)``: 1 = back to the base model, 0 = as plain."""
    s = summary[(summary["split"] == split) & (summary["metric"] != "coherence")]
    base = s.loc[s["method"] == "base", "mean"]
    plain = s.loc[s["method"] == "plain", "mean"]
    if base.empty or plain.empty:
        raise ValueError(f"share_removed needs base and plain rows for split {split!r}")
    change = plain.iloc[0] - base.iloc[0]
    out = s[~s["method"].isin(["base", "plain"])][["method", "directions", "param", "mean"]].copy()
    out["share_removed"] = (plain.iloc[0] - out["mean"]) / change if change else float("nan")
    return out.assign(split=split).reset_index(drop=True)


def above_baseline_curve(summary: pd.DataFrame, x_split: str, y_split: str, baseline: str = "fewer_examples") -> pd.DataFrame:
    """For each configuration: its ``y_split`` rate minus the baseline curve's at the same
    ``x_split`` rate. The curve joins base, the ``baseline`` settings (e.g. fewer examples) and
    plain fine-tuning, linearly in x. Negative: less of the y behaviour than simply learning
    less would give at the same x — the fair test of separation. NaN outside the curve's x range."""
    s = summary[summary["metric"] != "coherence"]
    key = ["method", "directions", "param"]
    xy = s[s["split"] == x_split].set_index(key)["mean"].to_frame("x").join(s[s["split"] == y_split].set_index(key)["mean"].rename("y"), how="inner").reset_index()
    curve = xy[xy["method"].isin(["base", "plain", baseline])].sort_values("x")
    if len(curve) < 2:
        raise ValueError(f"the {baseline!r} curve needs at least two of base, plain, {baseline} rows on {x_split!r} and {y_split!r}")
    xs, ys = curve["x"].to_numpy(), curve["y"].to_numpy()
    inside = (xy["x"] >= xs[0]) & (xy["x"] <= xs[-1])
    xy["curve_y"] = np.where(inside, np.interp(xy["x"], xs, ys), np.nan)
    xy["above_curve"] = xy["y"] - xy["curve_y"]
    return xy[~xy["method"].isin(["base", "plain", baseline])].reset_index(drop=True)
