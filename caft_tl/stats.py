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


def summarise(df: pd.DataFrame, by=("task", "method", "directions", "param", "split", "metric")) -> pd.DataFrame:
    """Mean and 95% interval over seeds for each group of a results table."""
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
