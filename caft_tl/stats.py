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
