import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from caft_tl.core.stats import above_baseline_curve, ci95, share_removed, summarise


def test_ci95_is_a_t_interval():
    m, lo, hi = ci95([1.0, 2.0, 3.0])
    half = scipy.stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert (m, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert ci95([0.4]) == (0.4, 0.4, 0.4)
    assert all(math.isnan(x) for x in ci95([]))


def _summary():
    rows = []
    for method, directions, seed, chat, code in [
        ("base", "none", 0, 0.2, 0.3),
        ("plain", "none", 0, 0.8, 0.9),
        ("plain", "none", 1, 0.8, 0.9),
        ("zero", "pca", 0, 0.5, 0.9),
        ("zero", "pca", 1, 0.5, 0.9),
    ]:
        for split, metric, v in [
            ("chat", "misalignment_rate", chat),
            ("code_heldout", "insecure_rate", code),
        ]:
            rows.append(
                dict(
                    task="t",
                    organism="t-s0-abcdef",
                    method=method,
                    directions=directions,
                    param="",
                    trained=method != "base",
                    seed=seed,
                    split=split,
                    metric=metric,
                    value=v,
                )
            )
    return summarise(pd.DataFrame(rows))


def test_share_removed():
    s = _summary()
    assert s.query("method == 'plain' and split == 'chat'")["n_seeds"].item() == 2
    chat = share_removed(s, "chat")
    assert chat["share_removed"].item() == pytest.approx(0.5)
    assert share_removed(s, "code_heldout")["share_removed"].item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="needs base and plain rows for split 'ood'"):
        share_removed(s, "ood")


def test_above_baseline_curve_interpolates_the_fewer_examples_line():
    rows = []
    for method, param, chat, code in [
        ("base", "", 0.2, 0.3),
        ("plain", "", 0.8, 0.9),
        ("fewer_examples", "n=10", 0.4, 0.5),
        ("zero", "", 0.3, 0.7),
        ("zero", "k=1", 0.9, 0.95),
    ]:
        for split, metric, v in [
            ("chat", "misalignment_rate", chat),
            ("code_heldout", "insecure_rate", code),
        ]:
            rows.append(
                dict(
                    task="t",
                    organism="t-s0-abcdef",
                    method=method,
                    directions="pca" if method == "zero" else "none",
                    param=param,
                    trained=method != "base",
                    seed=0,
                    split=split,
                    metric=metric,
                    value=v,
                )
            )
    out = above_baseline_curve(summarise(pd.DataFrame(rows)), "code_heldout", "chat").set_index("param")
    assert out.loc["", "curve_y"] == pytest.approx(0.6)  # halfway between (0.5, 0.4) and (0.9, 0.8)
    assert out.loc["", "above_curve"] == pytest.approx(-0.3)
    assert math.isnan(out.loc["k=1", "above_curve"])  # beyond plain: outside the curve


def test_rate_intervals_are_clipped_including_the_real_tasks_accuracies():
    from caft_tl.core.stats import is_rate

    assert is_rate("accuracy_intended") and is_rate("misaligned_rate") and is_rate("accuracy")
    assert not is_rate("misaligned_margin") and not is_rate("loss")
    rows = [
        dict(
            task="t",
            organism="real:m",
            method="plain",
            directions="none",
            param="",
            trained=True,
            seed=s,
            split="id",
            metric=m,
            value=v,
        )
        for s, v in enumerate([1.0, 0.875, 1.0])
        for m in ("accuracy_intended", "misaligned_margin")
    ]
    s = summarise(pd.DataFrame(rows)).set_index("metric")
    assert s.loc["accuracy_intended", "high"] == 1.0  # clipped: the t interval reaches 1.13
    assert s.loc["misaligned_margin", "high"] > 1.0  # not a rate: not clipped


def _seed_rows(spec):
    """rows from {(method, directions, param): [(x, y) per seed]} on splits x / y."""
    return pd.DataFrame(
        [
            dict(
                task="t",
                organism="o",
                method=m,
                directions=d,
                param=p,
                trained=m != "base",
                seed=s,
                split=split,
                metric="rate",
                value=v,
            )
            for (m, d, p), pts in spec.items()
            for s, xy in enumerate(pts)
            for split, v in zip(("x", "y"), xy)
        ]
    )


def test_bootstrap_above_curve_matches_the_point_estimate_and_widens_with_spread():
    from caft_tl.core.stats import bootstrap_above_curve

    spec = {
        ("base", "none", ""): [(0.0, 0.0)],
        ("plain", "none", ""): [(1.0, 1.0)] * 3,
        ("zero", "pca", ""): [(0.5, 0.1), (0.5, 0.1), (0.5, 0.1)],  # 0.4 below the diagonal curve, no spread
        ("zero", "random", ""): [(0.5, 0.2), (0.5, 0.8), (0.5, 0.5)],
    }  # on the curve on average, wide
    table = _seed_rows(spec)
    out = bootstrap_above_curve(table, "x", "y", n_boot=400).set_index("directions")
    point = above_baseline_curve(summarise(table.rename(columns={})), "x", "y").set_index("directions")
    assert (
        out.loc["pca", "above_curve"] == pytest.approx(point.loc["pca", "above_curve"]) == pytest.approx(-0.4)
    )
    assert out.loc["pca", "low"] == pytest.approx(-0.4) and out.loc["pca", "high"] == pytest.approx(-0.4)
    assert out.loc["random", "low"] < -0.1 < 0.1 < out.loc["random", "high"]
    with pytest.raises(ValueError, match="n_boot = 0"):
        bootstrap_above_curve(table, "x", "y", n_boot=0)


def test_bootstrap_ci95_resamples_the_units():
    from caft_tl.core.stats import bootstrap_ci95

    values = [0.1, 0.4, 0.2, 0.9, float("nan")]
    m, lo, hi = bootstrap_ci95(values, n_boot=2000, seed=1)
    draws = np.array(values[:4])[np.random.default_rng(1).integers(4, size=(2000, 4))].mean(axis=1)
    assert m == pytest.approx(0.4) and (lo, hi) == pytest.approx(
        (np.percentile(draws, 2.5), np.percentile(draws, 97.5))
    )  # NaN dropped
    assert 0.1 <= lo < m < hi <= 0.9 and bootstrap_ci95(values, n_boot=2000, seed=1) == (m, lo, hi)  # seeded
    assert bootstrap_ci95([0.3]) == (0.3, 0.3, 0.3) and all(math.isnan(x) for x in bootstrap_ci95([]))
    with pytest.raises(ValueError, match="n_boot = 0"):
        bootstrap_ci95(values, n_boot=0)
