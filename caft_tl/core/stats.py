"""Confidence intervals over seeds (or prompts) for results tables. No torch import: cheap to load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.stats

#: the bounds of a rate: every interval of a rate is clipped to them
RATE_BOUNDS = (0.0, 1.0)
#: the bounds of a percentile (:func:`null_percentile`): its intervals are clipped to them
PERCENTILE_BOUNDS = (0.0, 100.0)
#: metrics that are rates (besides every ``*_rate`` and ``accuracy_*``, e.g. the real tasks'
#: ``accuracy_intended``)
RATES = ("accuracy", "coherence", "precision", "recall", "oracle_span")


def is_rate(metric: str) -> bool:
    """Whether a metric is a rate in [0, 1] (its intervals are clipped to it)."""
    return metric in RATES or str(metric).endswith("_rate") or str(metric).startswith("accuracy_")


def ci95(values, bounds: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """(mean, low, high): Student-t 95% interval of the mean; a single value has zero width;
    ``bounds`` (a rate's :data:`RATE_BOUNDS`) clips the interval."""
    v = np.asarray(list(values), dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return (float("nan"),) * 3
    m = float(v.mean())
    if len(v) == 1:
        return m, m, m
    half = float(scipy.stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    lo, hi = m - half, m + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return m, lo, hi


def bootstrap_ci95(values, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile-bootstrap 95% interval of the mean, each draw resampling the
    values (the units: e.g. organisms) with replacement; NaN values are dropped, a single value has
    zero width, none gives NaN."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot = {n_boot!r}; expected a positive integer")
    v = np.asarray(list(values), dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return (float("nan"),) * 3
    m = float(v.mean())
    if len(v) == 1:
        return m, m, m
    means = v[np.random.default_rng(seed).integers(len(v), size=(n_boot, len(v)))].mean(axis=1)  # [n_boot]
    return m, float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(
    df: pd.DataFrame, by=("task", "organism", "method", "directions", "param", "trained", "split", "metric")
) -> pd.DataFrame:
    """Mean and 95% interval over seeds for each group of a results table (by default: per organism
    and configuration); the intervals of rates (:func:`is_rate`) are clipped to [0, 1]."""
    out = []
    for key, g in df.groupby(list(by), dropna=False, sort=False):
        group = dict(zip(by, key))
        m, lo, hi = ci95(g["value"], RATE_BOUNDS if "metric" in group and is_rate(group["metric"]) else None)
        out.append({**group, "mean": m, "low": lo, "high": hi, "n_seeds": len(g)})
    return pd.DataFrame(out)


def rate_table(summary: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """One row per configuration, one column per (split, metric), each rate followed by the
    coherence of the same split where the rows have it: ``mean [low, high]``."""
    s = summary.assign(
        cell=[
            f"{m:.{digits}f} [{l:.{digits}f}, {h:.{digits}f}]" if l != h else f"{m:.{digits}f}"
            for m, l, h in zip(summary["mean"], summary["low"], summary["high"])
        ]
    )
    table = s.pivot_table(
        index=["method", "directions", "param"],
        columns=["split", "metric"],
        values="cell",
        aggfunc="first",
        sort=False,
    )
    cols = sorted(
        table.columns, key=lambda c: (list(dict.fromkeys(summary["split"])).index(c[0]), c[1] == "coherence")
    )
    return table[cols]


def reduction_factor(summary: pd.DataFrame, split: str, metric: str) -> pd.DataFrame:
    """For each configuration: the excess of ``metric`` on ``split`` over the base model, and plain
    fine-tuning's excess ÷ its own (the EM reduction factor: 10 = a tenth of plain's excess
    misalignment; inf when its excess is ≤ 0)."""
    s = summary[(summary["split"] == split) & (summary["metric"] == metric)]
    base = s.loc[s["method"] == "base", "mean"]
    plain = s.loc[s["method"] == "plain", "mean"]
    if base.empty or plain.empty:
        raise ValueError(f"reduction_factor needs base and plain rows of {metric!r} on {split!r}")
    out = (
        s[~s["method"].isin(["base"])][["method", "directions", "param", "mean"]]
        .copy()
        .reset_index(drop=True)
    )
    out["excess"] = out["mean"] - base.iloc[0]
    plain_excess = plain.iloc[0] - base.iloc[0]
    out["reduction_factor"] = [plain_excess / e if e > 0 else float("inf") for e in out["excess"]]
    return out


def null_percentile(value: float, null: list[float] | np.ndarray, higher_is_better: bool = True) -> float:
    """Where ``value`` falls in a null distribution: the percentage of draws it beats (ties count
    half); 100 = better than every draw. ``higher_is_better`` False for a rate CAFT should lower."""
    v = np.asarray(null, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return float("nan")
    better = (value > v) if higher_is_better else (value < v)
    return float(100 * (better.sum() + 0.5 * (value == v).sum()) / len(v))


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


def above_baseline_curve(
    summary: pd.DataFrame, x_split: str, y_split: str, baseline: str = "fewer_examples"
) -> pd.DataFrame:
    """For each configuration: its ``y_split`` rate minus the baseline curve's at the same
    ``x_split`` rate. The curve joins base, the ``baseline`` settings (e.g. fewer examples) and
    plain fine-tuning, linearly in x. Negative: less of the y behaviour than simply learning
    less would give at the same x — the fair test of separation. NaN outside the curve's x range."""
    s = summary[summary["metric"] != "coherence"]
    key = ["method", "directions", "param"]
    xy = (
        s[s["split"] == x_split]
        .set_index(key)["mean"]
        .to_frame("x")
        .join(s[s["split"] == y_split].set_index(key)["mean"].rename("y"), how="inner")
        .reset_index()
    )
    curve = xy[xy["method"].isin(["base", "plain", baseline])].sort_values("x")
    if len(curve) < 2:
        raise ValueError(
            f"the {baseline!r} curve needs at least two of base, plain, {baseline} rows on {x_split!r} and "
            f"{y_split!r}"
        )
    xs, ys = curve["x"].to_numpy(), curve["y"].to_numpy()
    inside = (xy["x"] >= xs[0]) & (xy["x"] <= xs[-1])
    xy["curve_y"] = np.where(inside, np.interp(xy["x"], xs, ys), np.nan)
    xy["above_curve"] = xy["y"] - xy["curve_y"]
    return xy[~xy["method"].isin(["base", "plain", baseline])].reset_index(drop=True)


def bootstrap_above_curve(
    table: pd.DataFrame,
    x_split: str,
    y_split: str,
    baseline: str = "fewer_examples",
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """:func:`above_baseline_curve` with a 95% bootstrap interval: each draw resamples, with
    replacement, the fine-tuning seeds of every configuration (the curve's too; a seed's ``x`` and
    ``y`` stay paired) and recomputes the distance. ``table``: per-seed rows (one metric per split
    besides coherence). Columns: method, directions, param, above_curve (from the seed means),
    low, high (2.5 and 97.5 percentiles of the draws inside the curve's x range; all NaN where the point
    estimate is outside it)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot = {n_boot!r}; expected a positive integer")
    t = table[(table["metric"] != "coherence") & table["split"].isin([x_split, y_split])]
    key = ["method", "directions", "param"]
    wide = (
        t.pivot_table(index=key + ["seed"], columns="split", values="value", aggfunc="first")
        .dropna()
        .reset_index()
    )
    groups = {
        k: g[[x_split, y_split]].to_numpy() for k, g in wide.groupby(key, sort=False)
    }  # config → [n_seeds, 2]
    if not groups:
        raise ValueError(f"no configuration has both {x_split!r} and {y_split!r} rows")
    curve_keys = [k for k in groups if k[0] in ("base", "plain", baseline)]
    if len(curve_keys) < 2:
        raise ValueError(
            f"the {baseline!r} curve needs at least two of base, plain, {baseline} rows on {x_split!r} and "
            f"{y_split!r}"
        )
    others = [k for k in groups if k not in curve_keys]
    rng = np.random.default_rng(seed)

    def distances(means: dict) -> np.ndarray:
        pts = np.array([means[k] for k in curve_keys])
        pts = pts[np.argsort(pts[:, 0], kind="stable")]  # [n_curve, 2] sorted by x
        xs, ys = pts[:, 0], pts[:, 1]
        out = []
        for k in others:
            x, y = means[k]
            out.append(y - np.interp(x, xs, ys) if xs[0] <= x <= xs[-1] else np.nan)
        return np.array(out)

    point = distances({k: v.mean(0) for k, v in groups.items()})
    draws = np.array(
        [
            distances({k: v[rng.integers(len(v), size=len(v))].mean(0) for k, v in groups.items()})
            for _ in range(n_boot)
        ]
    )
    with np.errstate(all="ignore"):
        low, high = np.nanpercentile(draws, 2.5, axis=0), np.nanpercentile(draws, 97.5, axis=0)
    low[np.isnan(point)], high[np.isnan(point)] = (
        np.nan,
        np.nan,
    )  # outside the curve: no distance, no interval
    return pd.DataFrame([dict(zip(key, k)) for k in others]).assign(above_curve=point, low=low, high=high)
