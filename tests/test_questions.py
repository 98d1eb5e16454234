"""The thread's questions, answered from rows: verdicts follow the intervals, missing rows say so."""

import numpy as np
import pandas as pd
import pytest

from caft_tl.core import results
from caft_tl.evaluation import questions


def _table(n_organisms=3, sae=True):
    rng = np.random.default_rng(0)
    rows = []
    for o in range(n_organisms):
        org = f"o{o}"
        noise = lambda: float(rng.normal(0, 0.01))

        def add(method, dirs, value, trained, param="", seed=None, split="ood", metric="accuracy", org=org):
            rows.extend(
                results.rows(
                    results.RowKey("double_mc", org, method, dirs, param, trained=trained, seed=seed),
                    {split: {metric: value}},
                )
            )

        add("base", "none", 0.5 + noise(), False)
        add("zero", "pca", 0.7 + noise(), False)  # the base moves up: away from plain's behaviour (down)
        add(
            "base",
            "pca/blocks.1.hook_resid_post/pca0",
            2.0,
            False,
            split="finetune_data",
            metric="mean_projection",
        )
        add(
            "base",
            "pca/blocks.1.hook_resid_post/pca1",
            -1.0,
            False,
            split="finetune_data",
            metric="mean_projection",
        )
        if sae:
            add("base", "none", 1.0 + noise(), False, split="finetune_data", metric="sae_latent_blocks.1_L3")
            add("zero", "pca", 0.5 + noise(), False, split="finetune_data", metric="sae_latent_blocks.1_L3")
        for seed in (0, 1):
            plain = 0.1 + noise()
            add("plain", "none", plain, True, seed=seed)
            add("zero", "pca", 0.8 + noise(), True, seed=seed)
            add("detached", "pca", plain, True, seed=seed)  # exactly plain: no effect
            add("grad_only", "pca", 0.8 + noise(), True, seed=seed)
            add("steer_mean", "pca", 0.6 + noise(), True, "k=-3", seed)
            add("steer_mean", "pca", 0.05 + noise(), True, "k=3", seed)
            add("add", "pca", 0.3 + noise(), True, "alpha=4", seed)
    return pd.DataFrame(rows)


def test_verdicts_follow_the_rows():
    a = questions.answers(_table(), "ood", "accuracy").set_index("question")
    assert list(a.index) == list(questions.QUESTIONS)
    assert (
        a.loc["a", "answer"].startswith("away from the behaviour")
        and "positive on 3/6 directions" in a.loc["a", "answer"]
    )
    assert a.loc["a", "value"] < 0 and a.loc["a", "n"] == 3 and a.loc["a", "over"] == "organisms"
    assert a.loc["b", "answer"] == "down" and abs(a.loc["b", "value"] + 0.5) < 0.05
    assert (
        "no measurable effect" in a.loc["c", "answer"] and "less" in a.loc["c", "answer"]
    )  # detached does nothing here
    assert a.loc["d", "answer"].startswith("recovers it")  # grad_only matches CAFT here
    assert a.loc["e", "answer"] == "helps at k=-3; best k=-3: below CAFT"
    assert (
        a.loc["f", "answer"] == "CAFT vs add (alpha=4): CAFT better" and abs(a.loc["f", "value"] - 0.5) < 0.05
    )


def test_missing_rows_say_not_measured_and_one_organism_uses_seeds():
    t = _table(1, sae=False)
    t = t[t["method"] != "add"]
    a = questions.answers(t, "ood", "accuracy").set_index("question")
    assert (
        a.loc["b", "answer"] == "not measured"
        and a.loc["f", "answer"] == "not measured"
        and a.loc["f", "n"] == 0
    )
    assert a.loc["c", "over"] == "fine-tuning seeds" and a.loc["c", "n"] == 2
    md = questions.markdown(a.reset_index())
    assert md.count("\n") == len(questions.QUESTIONS) + 1 and "not measured" in md


def test_a_checks_none_condition_becomes_base_rows():
    from caft_tl.interventions import checks

    summary = pd.DataFrame(
        {
            "condition": ["none", "zero · pca"],
            "probe": ["blocks.1 L3"] * 2,
            "mean": [1.0, 0.4],
            "split": ["finetune_data"] * 2,
        }
    )
    rows = checks.baseline_rows(
        summary, "double_mc", "o", lambda r: f"sae_latent_{r.probe.replace(' ', '_')}"
    )
    assert [(r["method"], r["directions"], r["trained"], r["metric"], r["value"]) for r in rows] == [
        ("base", "none", False, "sae_latent_blocks.1_L3", 1.0)
    ]


def test_question_panels_show_each_measured_question_on_its_own_axis():
    from caft_tl.plotting import figures

    t = _table(1, sae=False)
    a = questions.answers(t[t["method"] != "add"], "ood", "accuracy")
    fig = figures.question_panels(a, "t")
    measured = a[a["n"] > 0]
    # b and f are not measured: no point
    assert [t.y[0] for t in fig.data] == pytest.approx(list(measured["value"]))
    assert [t.error_y.array[0] for t in fig.data] == pytest.approx(list(measured["high"] - measured["value"]))
    assert len({t.yaxis for t in fig.data}) == len(measured)
    units = [fig.layout[f"yaxis{i + 1 if i else ''}"].title.text for i in range(len(a))]
    assert units == [questions.UNITS[q] for q in a["question"]]


def test_a_nil_effect_with_a_tight_interval_is_no_measurable_difference():
    t = _table()
    shift = (t["method"] == "detached") & t["trained"]
    t.loc[shift, "value"] = t.loc[shift, "value"] + 0.005  # excludes 0 over organisms, but below MIN_EFFECT
    a = questions.answers(t, "ood", "accuracy").set_index("question")
    assert a.loc["c", "low"] > -1 and "no measurable effect" in a.loc["c", "answer"]
    t.loc[shift, "value"] = t.loc[shift, "value"] + 0.1  # now a real effect
    assert (
        questions.answers(t, "ood", "accuracy").set_index("question").loc["c", "answer"].startswith("helps")
    )
