"""Data filtering by projection: the scores' math, the drop, and fine-tunes on a job's own examples."""

import pytest
import torch

from caft_tl.core.activations import activations
from caft_tl.core.subspace import random_subspace
from caft_tl.diffing import data_filter
from caft_tl.training import finetunes
from caft_tl.training.loop import FinetuneConfig


def test_scores_are_the_mean_projected_change_on_response_positions(persona_organism, tiny_model, world):
    data = world.finetune_dataset(24, seed=1)
    subs = [random_subspace(tiny_model.cfg.d_model, 2, "blocks.1.hook_resid_post", seed=3)]
    same = data_filter.projection_scores(persona_organism, persona_organism, data, subs)
    assert same.shape == (24,) and torch.allclose(same, torch.zeros(24))
    scores = data_filter.projection_scores(persona_organism, tiny_model, data, subs)
    diff = activations(tiny_model, data, subs[0].hook_name) - activations(
        persona_organism, data, subs[0].hook_name
    )
    mask = data.position_mask("response")
    expected = torch.stack([(diff[i][mask[i]] @ subs[0].basis).norm(dim=-1).mean() for i in range(24)])
    assert torch.allclose(scores, expected, atol=1e-5)


def test_drop_top_removes_the_highest_scores_keeps_the_order(world):
    data = world.finetune_dataset(20, seed=0)
    scores = torch.arange(20.0).flip(0)  # the first rows score highest
    kept = data_filter.drop_top(data, scores, 0.25)
    assert len(kept) == 15 and torch.equal(kept.tokens, data.tokens[5:])
    with pytest.raises(ValueError, match=r"share 1.0 must be in \[0, 1\)"):
        data_filter.drop_top(data, scores, 1.0)
    with pytest.raises(ValueError, match=r"scores have shape \(3,\); expected \[20\]"):
        data_filter.drop_top(data, scores[:3], 0.1)


def test_a_job_trains_on_its_own_examples_and_caches_by_them(persona_organism, world, tmp_path):
    cfg = FinetuneConfig(n_examples=64, seed=0)
    full = world.finetune_dataset(64, seed=0)
    jobs = [
        finetunes.FinetuneJob(
            cfg, "filter_projection", "pca", "drop=25%", data=full.subset(torch.arange(48))
        ),
        finetunes.FinetuneJob(
            cfg, "filter_projection", "pca", "drop=50%", data=full.subset(torch.arange(32))
        ),
    ]
    rows = finetunes.run_finetunes(
        tmp_path, persona_organism, world, jobs, workers=1, progress=False, organism="o"
    )
    alone = finetunes.run_finetune(
        tmp_path / "alone",
        persona_organism,
        world,
        cfg,
        "filter_projection",
        "pca",
        "drop=25%",
        progress=False,
        organism="o",
        data=jobs[0].data,
    )[0]
    assert [r["value"] for r in rows if r["param"] == "drop=25%"] == pytest.approx(
        [r["value"] for r in alone], abs=1e-5
    )
    units = [finetunes._Unit.make(tmp_path, persona_organism, world, j, "o") for j in jobs]
    assert units[0].spec_hash != units[1].spec_hash and units[0].n_steps == 2 and units[1].n_steps == 1
    assert (
        "data"
        not in finetunes._Unit.make(tmp_path, persona_organism, world, finetunes.FinetuneJob(cfg), "o").spec
    )
