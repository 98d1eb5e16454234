"""Iterated CAFT (caft_tl.evaluation.iterated): the residual PCs, the extension and its control."""

import pandas as pd
import pytest
import torch

from caft_tl.core.run_dir import RunDir
from caft_tl.core.subspace import Subspace, random_subspace
from caft_tl.diffing.diffs import MomentStats
from caft_tl.evaluation import iterated
from caft_tl.interventions.intervention import Intervention

D, HOOK, OTHER = 16, "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"


def moments(x: torch.Tensor) -> MomentStats:
    stats = MomentStats.empty(x.shape[1])
    stats.add(x)
    return stats


def axis(*idx: int, hook: str = HOOK) -> Subspace:
    return Subspace(hook, torch.eye(D)[:, list(idx)], [f"e{i}" for i in idx])


def test_project_out_equals_the_moments_of_projected_vectors():
    x = torch.randn(50, D, generator=torch.Generator().manual_seed(0))
    q = random_subspace(D, 3, HOOK, seed=1).basis
    projected = x - (x @ q) @ q.T
    got, want = iterated.project_out(moments(x), q), moments(projected)
    assert got.count == want.count
    assert torch.allclose(got.total, want.total, atol=1e-5)
    assert torch.allclose(got.outer, want.outer, atol=1e-4)


def test_residual_pcs_find_the_direction_the_ablation_left():
    gen = torch.Generator().manual_seed(0)
    # the diff lives mostly along e0 (ablated) and e1 (not): outside e0, the top PC is ±e1
    x = (
        5.0 * torch.randn(200, 1, generator=gen) * torch.eye(D)[0]
        + 2.0 * torch.randn(200, 1, generator=gen) * torch.eye(D)[1]
    )
    x = x + 0.01 * torch.randn(200, D, generator=gen)
    iv = Intervention("zero", [axis(0)])
    pcs = iterated.residual_pcs({HOOK: moments(x), OTHER: moments(x)}, iv, n_pcs=2)
    assert pcs[HOOK].basis.shape == (D, 2)
    assert abs(pcs[HOOK].basis[1, 0].item()) > 0.99  # e1, not the ablated e0
    assert pcs[HOOK].basis[0].abs().max().item() < 1e-5  # orthogonal to e0
    assert abs(pcs[OTHER].basis[0, 0].item()) > 0.99  # a hook iv does not touch: taken whole


def test_extend_appends_directions_and_refuses_overlap():
    iv = Intervention("zero", [axis(0)], name="pca")
    grown = iterated.extend(iv, {HOOK: axis(1), OTHER: axis(2, hook=OTHER)}, "pca+iterated")
    assert grown.name == "pca+iterated" and grown.rank == 3
    assert torch.equal(grown.subspaces[0].basis, torch.eye(D)[:, [0, 1]])
    assert [s.hook_name for s in grown.subspaces] == [HOOK, OTHER]
    assert iv.rank == 1  # the input is unchanged
    with pytest.raises(ValueError, match=r"blocks\.0\.hook_resid_post.* not orthogonal"):
        iterated.extend(iv, {HOOK: axis(0)}, "bad")


def test_random_extension_matches_ranks_and_is_orthogonal():
    iv = Intervention("zero", [random_subspace(D, 4, HOOK, seed=0)])
    extra = iterated.random_extension(iv, {HOOK: 2, OTHER: 1, "blocks.2.hook_resid_post": 0}, seed=3)
    assert {h: s.k for h, s in extra.items()} == {HOOK: 2, OTHER: 1}
    assert (iv.subspaces[0].basis.T @ extra[HOOK].basis).abs().max().item() < 1e-5
    grown = iterated.extend(iv, extra, "random")
    assert grown.rank == 7
    again = iterated.random_extension(iv, {HOOK: 2}, seed=3)[HOOK].basis
    assert torch.equal(again, extra[HOOK].basis)  # seeded


def test_next_interventions_give_equal_ranks_and_refuse_a_saturated_round():
    iv = Intervention("zero", [axis(0)], name="pca")
    pcs = {HOOK: axis(1, 2, 3), OTHER: axis(4, 5, hook=OTHER)}
    rnd = iterated.Round({HOOK: [0, 2], OTHER: []}, pd.DataFrame(), saturated=False)
    interp, ctrl = iterated.next_interventions(iv, iv, pcs, rnd, r=2, name="pca")
    assert interp.rank == ctrl.rank == 3
    assert interp.subspaces[0].labels == ["e0", "r2·PC0", "r2·PC2"]
    assert torch.equal(interp.subspaces[0].basis, torch.eye(D)[:, [0, 1, 3]])
    none = iterated.Round({HOOK: [], OTHER: []}, pd.DataFrame(), saturated=True)
    with pytest.raises(ValueError, match="round 1 chose no directions"):
        iterated.next_interventions(iv, iv, pcs, none, r=2, name="pca")


@pytest.fixture(scope="module")
def organism(tmp_path_factory):
    from caft_tl.core import models
    from caft_tl.training.pretrain import PretrainConfig, load_or_pretrain

    model, world, folder = load_or_pretrain(
        "persona_em",
        model_cfg=models.ModelConfig(d_model=32, n_heads=2, d_head=16, d_mlp=64),
        cfg=PretrainConfig(steps=150, batch_size=32),
        cache_dir=tmp_path_factory.mktemp("cache"),
        progress=False,
    )
    return model, world, folder


@pytest.mark.parametrize("saturated", [False, True])
def test_run_rounds_trains_both_arms_at_equal_rank(organism, tmp_path, monkeypatch, saturated):
    """The plumbing of the rounds: the interpreter's choice (here fixed: PC0 at the first hook, or
    nothing) decides round 2's interventions; the control gets the same rank."""
    from caft_tl.core import models
    from caft_tl.diffing import diffs
    from caft_tl.directions import information, pca
    from caft_tl.training import finetunes, pretrain
    from caft_tl.training.loop import FinetuneConfig

    base, world, folder = organism
    run = RunDir(tmp_path)
    pretrain.export_organism(run, base, folder)
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    cfgs = [FinetuneConfig(n_examples=128, batch_size=32, seed=s) for s in (0, 1)]
    finetunes.run_finetune(run, base, world, cfgs[0], keep_model=True, progress=False)
    data = world.finetune_dataset(64, seed=10_000)
    ft, _ = models.load_model(run.require_finetune(seed=0, file="model.safetensors").parent)
    moments = diffs.collect_diff_stats(base, ft, data, hooks, progress=False)
    first = Intervention("zero", [pca.pca(moments[h]["diff"], 1, h)[0] for h in hooks], name="pca")
    read = []

    def fixed_choice(model, pcs, inputs, min_detection, window):
        read.append({h: p.basis for h, p in pcs.items()})
        chosen = {h: [] if saturated or h != hooks[0] else [0] for h in pcs}
        return iterated.Round(chosen, pd.DataFrame(), saturated=saturated)

    monkeypatch.setattr(iterated, "interpret_round", fixed_choice)
    inputs = information.interpretation_inputs(world, n_documents=60, n_finetune=40)
    it = iterated.IterationConfig(n_rounds=3 if saturated else 2, n_pcs=2)
    rows, rounds = iterated.run_rounds(
        run, base, world, first, "pca", cfgs, data, hooks, "response", inputs, it, progress=False
    )
    assert len(rounds) == len(read) == 1  # the interpreter read round 1's CAFT model only
    for s in first.subspaces:  # ... outside the ablated directions
        assert (s.basis.T @ read[0][s.hook_name]).abs().max().item() < 1e-4
    ranks = iterated.summarise(rows).groupby(["arm", "round"])["rank"].first().to_dict()
    if saturated:  # no round 2: iteration stops and says so
        assert ranks == {(iterated.CONTROL, 1): 2, (iterated.INTERPRETED, 1): 2}
        return
    assert ranks == {
        (iterated.CONTROL, 1): 2,
        (iterated.CONTROL, 2): 3,
        (iterated.INTERPRETED, 1): 2,
        (iterated.INTERPRETED, 2): 3,
    }
    assert set(rows["seed"]) == {0, 1} and set(rows.query("round == 2")["param"]) == {"round=2"}
    assert set(rows.query("round == 2")["directions"]) == {"pca+iterated", "pca+random"}
    one = rows.query("round == 1")  # round 1 is one set of fine-tunes, shown for both arms
    assert (
        one.query("arm == @iterated.CONTROL")["value"].to_numpy()
        == one.query("arm == @iterated.INTERPRETED")["value"].to_numpy()
    ).all()


def test_iteration_config_refuses_bad_values():
    with pytest.raises(ValueError, match=r"IterationConfig.n_rounds = 0; valid: an int >= 1"):
        iterated.IterationConfig(n_rounds=0)
    with pytest.raises(ValueError, match=r"min_detection = 1.5; valid: in \(0, 1\]"):
        iterated.IterationConfig(min_detection=1.5)
