"""The direction-set registry: one place builds every set, and it builds today's sets bit for bit.

The ``_legacy_*`` functions are the code that built the sets before the registry (``sets.pca_sets``,
``sets.sae_sets``, chapter 03's cell, the gate search's and the real experiment's assembly), kept
here verbatim as the reference the registry must reproduce on a tiny organism."""

import pandas as pd
import pytest
import torch

from caft_tl.core import models
from caft_tl.core.subspace import Subspace, random_subspace
from caft_tl.diffing import diffs
from caft_tl.directions import (
    explain,
    information,
    interpret,
    noninterp,
    oracle,
    persona_vector,
    registry,
)
from caft_tl.directions import sae as sae_lib
from caft_tl.directions.pca import pca
from caft_tl.real import experiment
from caft_tl.training.loop import FinetuneConfig, finetune

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


# ---- today's code, the reference --------------------------------------------------------------


def _legacy_pca_sets(pcs, chosen, d_model, random_seed=0, harmless=None):
    used = [h for h in pcs if chosen.get(h)]
    out = {
        "pca": [pcs[h].select(chosen[h]) for h in used],
        "topk_pca": [pcs[h].select(list(range(len(chosen[h])))) for h in used],
        "random": [
            random_subspace(d_model, len(chosen[h]), h, seed=random_seed + i) for i, h in enumerate(used)
        ],
    }
    if harmless is not None:
        out["noninterp_pca"] = [pcs[h].select(harmless[h]) for h in used if harmless.get(h)]
    return out


def _legacy_sae_sets(saes, chosen, ranked, d_model, random_seed=0):
    used = [h for h in chosen if chosen[h]]
    chosen_subs = [sae_lib.latent_subspace(saes[h], chosen[h]) for h in used]
    return {
        "sae": chosen_subs,
        "topk_sae": [
            sae_lib.latent_subspace(saes[h], ranked[h][: len(chosen[h])], name="topk_sae") for h in used
        ],
        "random_sae": [
            random_subspace(d_model, s.k, s.hook_name, seed=random_seed + 1000 + i)
            for i, s in enumerate(chosen_subs)
        ],
    }


def _legacy_chapter03(pcs, chosen, harmless, persona, oracle_subs, oracle_chosen, d_model, random_seed):
    out = {
        **_legacy_pca_sets(pcs, chosen, d_model, random_seed, harmless),
        "persona_vector": persona,
        "oracle": oracle_subs,
    }
    if any(oracle_chosen.values()):
        out["oracle_pca"] = _legacy_pca_sets(pcs, oracle_chosen, d_model)["pca"]
    return out


def _legacy_real(pcs, chosen, n_top, seed=0):
    sets = {"topk_pca": [s.select(list(range(min(n_top, s.k)))) for s in pcs.values()]}
    if chosen:
        sets["pca"] = [pcs[h].select(chosen[h]) for h in pcs if h in chosen]
    like = sets.get("pca", sets["topk_pca"])
    sets["random"] = [
        random_subspace(s.d_model, s.k, s.hook_name, seed=seed + i).with_mean(s.reference_mean)
        for i, s in enumerate(like)
    ]
    return sets


def assert_identical(got: dict[str, list[Subspace]], want: dict[str, list[Subspace]]):
    """Same names in the same order; per set the same hooks, ranks, labels, provenance, bases and
    means, bit for bit."""
    assert list(got) == list(want)
    for name, subs in want.items():
        assert len(got[name]) == len(subs), name
        for g, w in zip(got[name], subs):
            assert (g.hook_name, g.k, g.labels) == (w.hook_name, w.k, w.labels), name
            assert g.provenance == w.provenance, name
            assert torch.equal(g.basis, w.basis), name
            assert (g.reference_mean is None) == (w.reference_mean is None), name
            assert g.reference_mean is None or torch.equal(g.reference_mean, w.reference_mean), name


# ---- a tiny organism's inputs, as chapter 03 makes them ---------------------------------------


@pytest.fixture(scope="module")
def organism_inputs(persona_organism, world):
    """PCs of a brief fine-tune's diffs, the allowed explainer's choice, the non-interpretive choice,
    persona vectors, the ground truth and (untrained) SAEs of the tiny ``persona_em`` organism."""
    base = persona_organism
    ft = models.copy_model(base)
    finetune(ft, world.finetune_dataset(96), FinetuneConfig(n_examples=96, batch_size=32), progress=False)
    data = world.finetune_dataset(128, seed=10_000)
    moments = diffs.collect_diff_stats(base, ft, data, HOOKS, progress=False)
    pcs = {h: pca(moments[h]["diff"], 6, h)[0] for h in HOOKS}
    inputs = information.interpretation_inputs(world, n_documents=40, n_finetune=64)
    chosen = explain.choose(explain.explain_subspaces(base, pcs, inputs), inputs, HOOKS, 0.7).chosen
    chosen = {HOOKS[0]: [], HOOKS[1]: sorted(set(chosen[HOOKS[1]]) | {2})}  # a hook with none, one with ≥ 2
    harmless = noninterp.harmless_choice(
        noninterp.ablation_loss_deltas(ft, world.finetune_dataset(64), pcs),
        {h: len(c) for h, c in chosen.items()},
    )
    concepts = world.concept_directions(base, HOOKS)
    scores = pd.concat([interpret.concept_scores(pcs[h], concepts[h]) for h in HOOKS], ignore_index=True)
    oracle_chosen = oracle.chosen_by_hook(scores, world.target_concept, world.avoid_concept, threshold=0.0)
    act = {h: sae_lib.training_activations(base, world, h, 20, 0) for h in HOOKS}
    untrained = sae_lib.SAETrainConfig(architecture="topk", k=8, steps=0, batch_size=64, expansion=4)
    saes = {h: sae_lib.train_sae(act[h], untrained, h, progress=False) for h in HOOKS}
    return {
        "d_model": base.cfg.d_model,
        "pcs": pcs,
        "chosen": chosen,
        "harmless": harmless,
        "persona": persona_vector.persona_vectors(base, inputs, HOOKS),
        "oracle_subs": [concepts[h][world.target_concept] for h in HOOKS],
        "oracle_chosen": oracle_chosen,
        "saes": saes,
        "chosen_latents": {HOOKS[0]: [3, 17], HOOKS[1]: []},
        "ranked": {h: [17, 5, 3, 9] for h in HOOKS},
    }


def test_registry_builds_chapter_03s_sets_bit_for_bit(organism_inputs):
    x = organism_inputs
    assert any(x["oracle_chosen"].values())  # oracle_pca is built, and compared
    truth = registry.GroundTruth(dict(zip(HOOKS, x["oracle_subs"])), x["oracle_chosen"])
    got = registry.build(
        registry.SetInputs(
            x["d_model"], 3, x["pcs"], x["chosen"], x["harmless"], persona_vector=x["persona"], truth=truth
        )
    )
    want = _legacy_chapter03(
        x["pcs"],
        x["chosen"],
        x["harmless"],
        x["persona"],
        x["oracle_subs"],
        x["oracle_chosen"],
        x["d_model"],
        3,
    )
    assert_identical(got, want)
    assert [s.hook_name for s in got["pca"]] == [HOOKS[1]]  # the hook with nothing chosen gets no subspace
    sae_inputs = registry.SetInputs(
        x["d_model"], 3, saes=x["saes"], chosen_latents=x["chosen_latents"], ranked_latents=x["ranked"]
    )
    sae_got = registry.build(sae_inputs)
    assert_identical(sae_got, _legacy_sae_sets(x["saes"], x["chosen_latents"], x["ranked"], x["d_model"], 3))


def test_registry_builds_the_gate_searchs_and_the_real_tasks_sets_bit_for_bit(organism_inputs):
    from caft_tl.runner import gate_search

    x = organism_inputs
    truth = registry.GroundTruth(dict(zip(HOOKS, x["oracle_subs"])), x["oracle_chosen"])
    got = registry.build(
        registry.SetInputs(x["d_model"], pcs=x["pcs"], chosen=x["chosen"], truth=truth),
        gate_search.GATE4_SETS,
    )
    want = {
        **_legacy_pca_sets(x["pcs"], x["chosen"], x["d_model"]),
        "oracle_pca": _legacy_pca_sets(x["pcs"], x["oracle_chosen"], x["d_model"])["pca"],
    }
    assert_identical(got, {n: s for n, s in want.items() if s})
    pcs = {h: s.with_mean(torch.full((x["d_model"],), float(i))) for i, (h, s) in enumerate(x["pcs"].items())}
    for chosen in ({HOOKS[1]: [0, 4]}, {}):
        got = experiment.direction_sets(pcs, chosen, n_top=3, seed=5)
        assert_identical(got, _legacy_real(pcs, chosen, n_top=3, seed=5))


def _pcs(d=16):
    return {h: random_subspace(d, 6, h, seed=i) for i, h in enumerate(HOOKS)}


def test_sets_that_need_ground_truth_are_left_out_without_it_and_refused_by_name():
    x = registry.SetInputs(16, pcs=_pcs(), chosen={HOOKS[0]: [1], HOOKS[1]: [0, 4]})
    assert {n for n, s in registry.SETS.items() if s.needs_ground_truth} == {"oracle", "oracle_pca"}
    assert list(registry.build(x)) == ["pca", "topk_pca", "random"]  # what a real model gets from its PCs
    with pytest.raises(
        ValueError,
        match=r"^direction set 'oracle_pca' needs ground truth, which only "
        r"organism tasks give: SetInputs\.truth is None$",
    ):
        registry.build(x, ["pca", "oracle_pca"])
    split = registry.without_ground_truth(["pca", "oracle", "sae", "oracle_pca"])
    assert split == (["pca", "sae"], ["oracle", "oracle_pca"])
    with pytest.raises(ValueError, match="^unknown direction set 'orcale'"):
        registry.without_ground_truth(["pca", "orcale"])
    with pytest.raises(
        ValueError,
        match=r"^direction set 'noninterp_pca' needs these inputs: "
        r"SetInputs\.harmless is None$",
    ):
        registry.build(x, ["noninterp_pca"])


def test_every_set_at_the_chosen_hooks_with_matched_ranks_and_empty_sets_left_out():
    pcs = _pcs()
    nothing = {HOOKS[0]: [], HOOKS[1]: []}
    truth = registry.GroundTruth({h: random_subspace(16, 1, h, seed=9) for h in HOOKS}, nothing)
    out = registry.build(
        registry.SetInputs(
            16,
            pcs=pcs,
            chosen={HOOKS[0]: [], HOOKS[1]: [1, 4]},
            harmless={HOOKS[0]: [], HOOKS[1]: [0, 2]},
            truth=truth,
        )
    )
    assert list(out) == ["pca", "topk_pca", "random", "noninterp_pca", "oracle"]  # oracle_pca: empty
    for name in ("pca", "topk_pca", "random", "noninterp_pca"):
        assert [(s.hook_name, s.k) for s in out[name]] == [(HOOKS[1], 2)]
    assert out["pca"][0].provenance["selected"] == [1, 4]
    assert out["topk_pca"][0].provenance["selected"] == [0, 1]
    assert out["noninterp_pca"][0].provenance["selected"] == [0, 2]
    assert [s.k for s in out["oracle"]] == [1, 1]
    assert registry.build(registry.SetInputs(16, pcs=pcs, chosen={})) == {}


def test_unknown_and_duplicate_names_are_one_line_errors():
    with pytest.raises(ValueError, match=r"^unknown direction set 'pcaa'; valid: pca, topk_pca, random, "):
        registry.get_set("pcaa")
    with pytest.raises(ValueError, match="^direction set 'pca' is already registered$"):
        registry.register_set("pca", needs=("pcs",), description="again")
    with pytest.raises(ValueError, match=r"^direction set 'x' needs unknown inputs \['pc'\]; valid: d_model"):
        registry.register_set("x", needs=("pc",), description="a typo")
    assert "x" not in registry.SETS
    assert all(s.description and "\n" not in s.description for s in registry.SETS.values())
