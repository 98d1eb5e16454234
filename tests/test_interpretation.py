"""Interpretation without an oracle: the information rule, the automated explainer, the choice
rule, the oracle's scores of a choice, the null distribution and the non-interpretive baseline."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from caft_tl.core import stats
from caft_tl.core.run_dir import RunDir
from caft_tl.core.subspace import Subspace, random_subspace
from caft_tl.directions import explain, information, interpret, noninterp, oracle, sets
from caft_tl.directions.information import InformationRuleError, InterpretationInputs, interpretation_inputs
from caft_tl.organism import make_task

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_mid"]


def _forbid(monkeypatch, task):
    """Make everything the information rule forbids raise when it is reached."""
    for name in (
        "eval_prompts",
        "concept_directions",
        "concept_subspaces",
        "document_kinds",
        "label_answers",
        "base_report",
    ):
        monkeypatch.setattr(
            task, name, lambda *a, _n=name, **k: pytest.fail(f"the interpreter reached task.{_n}")
        )


@pytest.mark.parametrize("name", ["persona_em", "double_mc"])
def test_the_interpreter_runs_end_to_end_without_ood_prompts_or_ground_truth(name, monkeypatch, tiny_model):
    task = make_task(name)
    _forbid(monkeypatch, task)
    inputs = interpretation_inputs(task, n_documents=80, n_finetune=40)
    assert all(set(d.labels) <= {"length"} for d, _ in inputs.datasets.values())  # hidden labels stripped
    from caft_tl.core import models
    from tests.conftest import TINY

    model = (
        tiny_model
        if name == "persona_em"
        else models.build_model(TINY, len(task.vocab), seed=0, device="cpu")
    )
    pcs = {h: random_subspace(model.cfg.d_model, 3, h, seed=i) for i, h in enumerate(HOOKS)}
    table = explain.explain_subspaces(model, pcs, inputs, n_top=10)
    assert len(table) == 2 * 3 * 2 and set(table["label"]) <= set(inputs.lexicon)
    choice = explain.choose(table, inputs, HOOKS)
    assert (
        set(choice.chosen) == set(HOOKS) and sum(map(len, choice.chosen.values())) >= 1
    )  # falls back rather than nothing


def test_an_interpreter_handed_ood_prompts_or_a_task_is_refused(tiny_model):
    dmc = make_task("double_mc")
    ood = dmc.eval_prompts("ood")  # carries the answers and the spurious labels
    ok = interpretation_inputs(make_task("persona_em"), n_documents=20, n_finetune=20)
    with pytest.raises(InformationRuleError, match="carries labels"):
        InterpretationInputs(
            "double_mc", dmc.vocab, {"answers": (4, 5)}, "sentiment", ("answers",), {"ood": (ood, "all")}
        )
    persona = make_task("persona_em")
    docs = persona.sample_documents(20, torch.Generator().manual_seed(0))
    with pytest.raises(InformationRuleError, match=r"labels \['persona'\]"):
        InterpretationInputs(
            "persona_em",
            persona.vocab,
            ok.lexicon,
            "misalignment",
            ("harmful",),
            {"documents": (docs, "all")},
        )
    sub = random_subspace(tiny_model.cfg.d_model, 2, HOOKS[0])
    with pytest.raises(InformationRuleError, match="reads InterpretationInputs only, not a PersonaEM"):
        explain.explain_subspace(tiny_model, sub, persona)
    with pytest.raises(ValueError, match="must be lexicon groups"):
        InterpretationInputs("persona_em", persona.vocab, ok.lexicon, "x", ("nonsense",), ok.datasets)
    assert information.unlabelled(docs).labels == {}


def _planted(world):
    """Synthetic projections on allowed persona_em data: direction 0 is high exactly where the
    window holds a harmful answer, direction 1 is noise."""
    inputs = interpretation_inputs(world, n_documents=400, n_finetune=100)
    member = inputs.membership()
    g = torch.Generator().manual_seed(0)
    values = {}
    for name, (data, _) in inputs.datasets.items():
        harmful = explain.window_membership(data.tokens, member, 4)[
            ..., inputs.groups.index("harmful")
        ].float()
        noise = torch.randn(*data.tokens.shape, 2, generator=g)
        values[name] = torch.stack([3 * harmful + 0.3 * noise[..., 0], noise[..., 1]], -1)
    return inputs, explain.readings(values, inputs, window=4)


def test_the_explainer_names_a_planted_directions_group_and_detects_it(world):
    inputs, r = _planted(world)
    table = explain.explain_values(r, inputs, HOOKS[0], ["planted", "noise"], [0, 1], n_top=20).set_index(
        ["direction", "sign"]
    )
    assert table.loc[("planted", "+"), "label"] == "harmful"
    assert table.loc[("planted", "+"), "detection"] > 0.95 and table.loc[
        ("planted", "+"), "shares"
    ].startswith("harmful 1.00")
    for sign in "+-":
        assert 0.35 < table.loc[("noise", sign), "detection"] < 0.65  # a random direction: chance
    choice = explain.choose(table.reset_index(), inputs, HOOKS)
    assert choice.chosen == {HOOKS[0]: [0], HOOKS[1]: []} and not choice.fallback


def test_the_rule_falls_back_to_the_best_concept_reading_and_says_so(world):
    inputs, r = _planted(world)
    table = explain.explain_values(r, inputs, HOOKS[0], ["planted", "noise"], [0, 1], n_top=20)
    table["label"] = "code"  # nothing reads the concept
    choice = explain.choose(table, inputs, HOOKS)
    assert choice.fallback and choice.chosen == {HOOKS[0]: [0], HOOKS[1]: []}


def test_auroc():
    assert explain.auroc(np.array([0.1, 0.2, 0.9, 0.8]), np.array([False, False, True, True])) == 1.0
    assert explain.auroc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5
    assert math.isnan(explain.auroc(np.array([1.0, 2.0]), np.array([True, True])))


def test_scores_of_a_constructed_choice():
    eye = torch.eye(4)
    pcs = Subspace("h", eye, [f"PC{i}" for i in range(4)])
    concepts = {"bad": Subspace("h", eye[:, :1], ["bad"]), "keep": Subspace("h", eye[:, 1:2], ["keep"])}
    scores = interpret.concept_scores(pcs, concepts)
    score = oracle.score_choice(
        scores, {"h": [0, 2]}, {"h": pcs.select([0, 2])}, {"h": concepts["bad"]}, "bad", "keep", 0.2
    )
    row = score.set_index("hook").loc["h"]
    assert (row["n_chosen"], row["n_true"], row["precision"], row["recall"], row["oracle_span"]) == (
        2,
        1,
        0.5,
        1.0,
        pytest.approx(1.0),
    )
    empty = (
        oracle.score_choice(scores, {"h": []}, {"h": None}, {"h": concepts["bad"]}, "bad", "keep")
        .set_index("hook")
        .loc["h"]
    )
    assert math.isnan(empty["precision"]) and empty["recall"] == 0.0 and empty["oracle_span"] == 0.0
    tilted = Subspace("h", ((eye[:, 0] + eye[:, 1]) / 2**0.5)[:, None])
    assert oracle.oracle_span(tilted, concepts["bad"]) == pytest.approx(0.5)
    rows = oracle.score_rows(score, "t", "t-s0-abcdef", "pca", extra={"fallback": 0.0})
    assert {(r["method"], r["directions"], r["trained"]) for r in rows} == {("interpretation", "pca", False)}
    assert {(r["split"], r["metric"]) for r in rows} >= {
        ("h", "precision"),
        ("all", "recall"),
        ("all", "fallback"),
        ("h", "oracle_span"),
    }
    assert oracle.is_concept(scores, "bad", "keep").tolist() == [True, False, False, False]


def test_the_null_distribution_has_at_least_20_draws_matched_in_hooks_and_ranks(tmp_path):
    like = [random_subspace(16, 3, "a", seed=0), random_subspace(16, 1, "b", seed=1)]
    null = sets.null_sets(like, 16, n_draws=20)
    assert list(null) == [f"random/{i}" for i in range(20)] and all(sets.is_null(n) for n in null)
    assert not sets.is_null("random") and not sets.is_null("random_sae")
    for subs in null.values():
        assert [(s.hook_name, s.k) for s in subs] == [("a", 3), ("b", 1)]
    firsts = torch.stack([subs[0].basis[:, 0] for subs in null.values()])
    assert torch.linalg.matrix_rank(firsts) == min(20, 16)  # distinct draws
    assert RunDir(tmp_path).path("subspaces", "random/3").name == "random_3"
    assert RunDir(tmp_path).finetune("zero", "random/3", "", 0).name == "zero-random_3-seed0"


def test_the_non_interpretive_choice_skips_pcs_that_hurt_the_loss(persona_organism, world):
    from caft_tl.core import models
    from caft_tl.training.loop import FinetuneConfig, finetune

    ft = models.copy_model(persona_organism)
    data = world.finetune_dataset(96)
    finetune(ft, data, FinetuneConfig(n_examples=96, batch_size=32), progress=False)
    subs = {h: random_subspace(ft.cfg.d_model, 3, h, seed=i) for i, h in enumerate(HOOKS)}
    deltas = noninterp.ablation_loss_deltas(ft, data, subs)
    assert len(deltas) == 6 and np.isfinite(deltas["delta"]).all()
    assert list(map(len, noninterp.harmless_choice(deltas, {HOOKS[0]: 2, HOOKS[1]: 0}).values())) == [2, 0]
    made = pd.DataFrame({"hook": "h", "index": range(4), "delta": [0.9, 0.0, 0.5, 0.01]})
    assert noninterp.harmless_choice(made, {"h": 2}, tolerance=0.1) == {"h": [1, 3]}
    assert noninterp.harmless_choice(made, {"h": 3}, tolerance=0.1) == {
        "h": [1, 2, 3]
    }  # filled by the least-hurting


def test_rates_are_clipped_and_the_em_reduction_factor_and_null_percentile():
    rows = [
        dict(
            task="t",
            organism="o",
            method=m,
            directions=d,
            param="",
            trained=m != "base",
            seed=s,
            split="chat",
            metric="misalignment_rate",
            value=v,
        )
        for m, d, s, v in [
            ("base", "none", 0, 0.2),
            ("plain", "none", 0, 0.8),
            ("plain", "none", 1, 0.8),
            ("zero", "pca", 0, 0.3),
            ("zero", "pca", 1, 0.0),
            ("zero", "pca", 2, 0.0),
        ]
    ]
    summary = stats.summarise(pd.DataFrame(rows))
    pca = summary.query("method == 'zero'").iloc[0]
    assert pca["low"] == 0.0 and pca["high"] <= 1.0
    red = stats.reduction_factor(summary, "chat", "misalignment_rate").set_index("method")
    assert red.loc["plain", "reduction_factor"] == pytest.approx(1.0) and red.loc[
        "zero", "reduction_factor"
    ] == float("inf")
    assert stats.null_percentile(0.5, [0.1, 0.2, 0.5, 0.9]) == pytest.approx(62.5)
    assert stats.null_percentile(0.05, [0.1, 0.2], higher_is_better=False) == 100.0
    assert stats.ci95([0.9, 1.0, 1.0], bounds=stats.RATE_BOUNDS)[2] == 1.0


def test_chapter_01_takeaway_follows_the_task_and_its_rows():
    import pandas as pd

    from caft_tl.evaluation import takeaways
    from caft_tl.organism import make_task

    task = make_task("double_mc", {"n_eval": 40})
    summary = pd.DataFrame(
        [
            {"method": "base", "split": "ood", "metric": "accuracy", "mean": 0.5, "low": 0.5, "high": 0.5},
            {"method": "plain", "split": "ood", "metric": "accuracy", "mean": 0.1, "low": 0.05, "high": 0.15},
            {"method": "plain", "split": "id", "metric": "accuracy", "mean": 0.99, "low": 0.98, "high": 1.0},
        ]
    )
    text = takeaways.plain(task, summary)
    assert (
        "`double_mc`" in text
        and "accuracy 0.10 [0.05, 0.15] on `ood`" in text
        and "below the base model's 0.50" in text
    )
    assert "chat" not in text and "harmful" not in text  # no other task's story
    assert "not measurably" in takeaways.plain(task, summary.assign(low=0.0, high=1.0))
