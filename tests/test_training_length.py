"""Longer training (caft_tl.evaluation.training_length): the lengths, the jobs, CAFT's effect."""

import math

import pandas as pd
import pytest

from caft_tl.core import files, models
from caft_tl.core.run_dir import RunDir
from caft_tl.evaluation import training_length as tl


@pytest.mark.parametrize("bad", [[], [2, 4], [1, 1], [1, 0], [1, True], [1, 2.0]])
def test_check_lengths_refuses(bad):
    with pytest.raises(ValueError, match=r"lengths=.*; valid: distinct ints >= 1 including 1"):
        tl.check_lengths(bad)


def test_check_lengths_sorts():
    assert tl.check_lengths([4, 1, 2]) == [1, 2, 4]
    assert tl.length_param(1) == "" and tl.length_param(4) == "steps=4x"


def rows(method, length, values):
    return [
        {"method": method, "length": length, "split": "ood", "metric": "rate", "seed": s, "value": v}
        for s, v in enumerate(values)
    ]


def test_effect_is_the_share_of_plains_change_caft_removes():
    df = pd.DataFrame(
        rows("base", 1, [0.1])
        + rows("plain", 1, [0.5, 0.5])
        + rows("zero", 1, [0.2, 0.2])
        + rows("plain", 2, [0.7, 0.5])
        + rows("zero", 2, [0.6, 0.4])
        + rows("plain", 4, [0.1, 0.1])
        + rows("zero", 4, [0.1, 0.1])
    )
    out = tl.effect(df, "ood", "rate").set_index("length")
    assert out.loc[1, "share_removed"] == pytest.approx(0.75)  # (0.5 - 0.2) / (0.5 - 0.1)
    assert out.loc[2, "plain"] == pytest.approx(0.6) and out.loc[2, "caft"] == pytest.approx(0.5)
    assert out.loc[2, "share_removed"] == pytest.approx(0.2)  # (0.6 - 0.5) / (0.6 - 0.1)
    assert math.isnan(out.loc[4, "share_removed"])  # plain did not move it
    with pytest.raises(ValueError, match="needs the base model's row for ood/rate"):
        tl.effect(df[df["method"] != "base"], "ood", "rate")


@pytest.fixture(scope="module")
def organism(tmp_path_factory):
    from caft_tl.training.pretrain import PretrainConfig, load_or_pretrain

    return load_or_pretrain(
        "persona_em",
        model_cfg=models.ModelConfig(d_model=32, n_heads=2, d_head=16, d_mlp=64),
        cfg=PretrainConfig(steps=150, batch_size=32),
        cache_dir=tmp_path_factory.mktemp("cache"),
        progress=False,
    )


def test_run_lengths_reads_back_1x_and_trains_longer(organism, tmp_path):
    from caft_tl.core.subspace import random_subspace
    from caft_tl.interventions.intervention import Intervention
    from caft_tl.training import finetunes, pretrain
    from caft_tl.training.loop import FinetuneConfig

    base, world, folder = organism
    run = RunDir(tmp_path)
    pretrain.export_organism(run, base, folder)
    cfg = FinetuneConfig(n_examples=96, batch_size=32, seed=0)
    plain_rows, _ = finetunes.run_finetune(run, base, world, cfg, progress=False)
    done = run.require_finetune(seed=0)
    written = done.stat().st_mtime_ns
    iv = Intervention("zero", [random_subspace(32, 2, "blocks.0.hook_resid_post", seed=0)])
    out = tl.run_lengths(run, base, world, iv, "random", [cfg], [2, 1], progress=False)
    assert sorted(set(out["length"])) == [1, 2] and set(out["method"]) == {"plain", "zero"}
    one = out.query("length == 1 and method == 'plain'")
    assert one["value"].tolist() == [r["value"] for r in plain_rows]
    assert done.stat().st_mtime_ns == written  # read back, not re-trained
    losses = {
        m: len(files.read_json(run.require_finetune("plain", "none", tl.length_param(m), 0))["losses"])
        for m in (1, 2)
    }
    assert losses == {1: 3, 2: 6}  # 96 / 32 steps per epoch
