"""Chapter 09's leakage measures on hand-built diffs: energy inside a subspace, the concept shift and its
sign, the recovered share, and the table's shape."""

import math

import pytest
import torch

from caft_tl.core.subspace import Subspace, orthonormalize
from caft_tl.diffing.diffs import MomentStats
from caft_tl.evaluation import leakage, takeaways
from caft_tl.plotting import leakage_figures

D = 6
HOOKS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def stats_of(x: torch.Tensor) -> MomentStats:
    s = MomentStats.empty(x.shape[1])
    s.add(x)
    return s


def axis(i: int, hook: str = HOOKS[1]) -> Subspace:
    return Subspace(hook, torch.eye(D)[:, [i]])


def test_energy_share_is_one_inside_zero_orthogonal_and_the_trace_share_between():
    gen = torch.Generator().manual_seed(0)
    sub = Subspace(HOOKS[1], torch.eye(D)[:, :2])  # the first two axes
    inside = torch.zeros(50, D)
    inside[:, :2] = torch.randn(50, 2, generator=gen)
    outside = torch.zeros(50, D)
    outside[:, 2:] = torch.randn(50, D - 2, generator=gen)
    assert leakage.energy_share(stats_of(inside), sub) == pytest.approx(1.0)
    assert leakage.energy_share(stats_of(outside), sub) == pytest.approx(0.0, abs=1e-12)
    mixed = inside + outside
    want = (inside**2).sum() / (mixed**2).sum()  # uncentered: a constant shift counts too
    assert leakage.energy_share(stats_of(mixed), sub) == pytest.approx(want.item())
    rotated = Subspace(HOOKS[1], orthonormalize(torch.randn(D, 2, generator=gen)))
    share = leakage.energy_share(stats_of(mixed), rotated)
    assert 0 < share < 1
    assert math.isnan(leakage.energy_share(stats_of(torch.zeros(4, D)), sub))
    with pytest.raises(ValueError, match="has d_model 6; the diff has 8"):
        leakage.energy_share(stats_of(torch.ones(3, 8)), sub)


def test_a_constant_shift_counts_as_energy():
    shift = torch.zeros(10, D)
    shift[:, 3] = 2.0  # every position moved the same way
    assert leakage.energy_share(stats_of(shift), axis(3)) == pytest.approx(1.0)


def test_concept_shift_is_the_projection_on_the_unit_direction_with_its_sign():
    mean = torch.tensor([3.0, -2.0, 0, 0, 0, 0])
    assert leakage.concept_shift(mean, axis(0)) == pytest.approx(3.0)
    assert leakage.concept_shift(mean, axis(1)) == pytest.approx(-2.0)
    assert leakage.concept_shift(mean, torch.tensor([0.0, 5, 0, 0, 0, 0])) == pytest.approx(
        -2.0
    )  # normalised
    assert leakage.concept_shift(-mean, axis(0)) == pytest.approx(-3.0)
    with pytest.raises(ValueError, match="rank 2"):
        leakage.concept_shift(mean, Subspace(HOOKS[0], torch.eye(D)[:, :2]))
    with pytest.raises(ValueError, match="direction is zero"):
        leakage.concept_shift(mean, torch.zeros(D))
    with pytest.raises(ValueError, match=r"shape \(4,\); the mean diff \(6,\)"):
        leakage.concept_shift(mean, torch.ones(4))


def test_recovered_is_the_ratio_and_nan_without_a_plain_shift():
    assert leakage.recovered(0.8, 0.2) == pytest.approx(0.25)
    assert leakage.recovered(-0.5, -0.5) == pytest.approx(1.0)
    assert leakage.recovered(0.5, -0.25) == pytest.approx(-0.5)
    assert math.isnan(leakage.recovered(0.0, 0.3))


def _world():
    """A plain fine-tune that moves along concept axis 0 at every hook; a CAFT model that ablated axis 0
    at the middle hook: nothing of it there, half of it downstream, and a little energy left inside."""
    concepts = {h: {"bad": axis(0, h), "kept": axis(1, h)} for h in HOOKS}
    plain, caft = {}, {}
    for i, h in enumerate(HOOKS):
        p = torch.zeros(20, D)
        p[:, 0], p[:, 1] = 2.0, 1.0
        c = torch.zeros(20, D)
        c[:, 0], c[:, 1], c[:, 2] = [0.0, 0.0, 1.0][i], 1.0, 1.0
        plain[h], caft[h] = stats_of(p), stats_of(c)
    return plain, {"pca": caft}, {"pca": [axis(0)]}, concepts


def test_the_table_has_a_row_per_set_method_hook_and_concept():
    plain, caft, subs, concepts = _world()
    t = leakage.leakage_table(plain, caft, subs, concepts, task="persona_em", organism="o1")
    assert tuple(t.columns) == leakage.COLUMNS and len(t) == 1 * 2 * len(HOOKS) * 2
    assert list(t["method"].unique()) == ["plain", "zero"] and set(t["concept"]) == {"bad", "kept"}
    at = t.set_index(["method", "hook", "concept"])
    assert at.loc[("plain", HOOKS[1], "bad"), "energy_in_subspace"] == pytest.approx(4 / 5)
    assert at.loc[("zero", HOOKS[1], "bad"), "energy_in_subspace"] == pytest.approx(0.0)
    assert at.loc[("zero", HOOKS[1], "bad"), "ablated"] and not at.loc[("zero", HOOKS[2], "bad"), "ablated"]
    assert t.loc[~t["ablated"], "energy_in_subspace"].isna().all()  # no subspace at the other hooks
    assert at.loc[("zero", HOOKS[2], "bad"), "concept_shift"] == pytest.approx(1.0)
    assert at.loc[("zero", HOOKS[2], "bad"), "recovered_share"] == pytest.approx(0.5)
    assert at.loc[("zero", HOOKS[0], "kept"), "recovered_share"] == pytest.approx(1.0)
    assert t.loc[t["method"] == "plain", "recovered_share"].isna().all()
    assert at.loc[("zero", HOOKS[0], "bad"), "diff_energy"] == pytest.approx(2.0)
    assert set(t["task"]) == {"persona_em"} and set(t["organism"]) == {"o1"}
    text = takeaways.leakage(t, HOOKS[-1], "bad")
    assert "0.00 of its change's energy" in text and "recovered share of 0.50" in text
    fig = leakage_figures.concept_shift_by_hook(t, "shift")
    assert len(fig.data) == 2 * 2  # plain and zero · pca, on each concept's panel
    assert list(leakage_figures.energy_in_subspace(t, "energy").data[1].y) == pytest.approx([0.0])


def test_without_ground_truth_the_table_keeps_the_energy_and_leaves_the_concepts_empty():
    plain, caft, subs, _ = _world()
    t = leakage.leakage_table(plain, caft, subs)
    assert len(t) == 2 * len(HOOKS) and set(t["concept"]) == {""}
    assert t["concept_shift"].isna().all() and t["recovered_share"].isna().all()
    assert t["energy_in_subspace"].notna().sum() == 2
    assert "recovered share" not in takeaways.leakage(t, HOOKS[-1])
    with pytest.raises(ValueError, match="no concept rows"):
        leakage_figures.concept_shift_by_hook(t, "shift")


def test_bad_inputs_are_one_line_errors():
    plain, caft, subs, concepts = _world()
    with pytest.raises(ValueError, match=r"CAFT models of sets \['pca'\]; subspaces of sets \['oracle'\]"):
        leakage.leakage_table(plain, caft, {"oracle": subs["pca"]})
    with pytest.raises(ValueError, match="ablates \\['blocks.5.hook_resid_post'\\], which are not diffed"):
        leakage.leakage_table(plain, caft, {"pca": [axis(0, "blocks.5.hook_resid_post")]})
    short = {"pca": {h: s for h, s in caft["pca"].items() if h != HOOKS[0]}}
    with pytest.raises(ValueError, match="CAFT model 'pca' is diffed at"):
        leakage.leakage_table(plain, short, subs)
    with pytest.raises(ValueError, match=r"no concept directions at \['blocks.0.hook_resid_pre'\]"):
        leakage.leakage_table(plain, caft, subs, {h: c for h, c in concepts.items() if h != HOOKS[0]})


def test_diffed_hooks_are_the_stream_then_any_other_ablated_hook():
    subs = {"a": [axis(0, HOOKS[1])], "b": [axis(0, "blocks.0.hook_attn_out")]}
    assert leakage.diffed_hooks(HOOKS, subs) == [*HOOKS, "blocks.0.hook_attn_out"]
