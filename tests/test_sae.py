"""SAELens SAEs: training quality, loading and its checks, latent ranking, latent subspaces."""

import json

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from caft_tl.core import models
from caft_tl.core.subspace import Subspace
from caft_tl.directions import sae
from caft_tl.interventions import checks
from caft_tl.interventions.intervention import Intervention

HOOK = "blocks.0.hook_resid_post"
FAST = dict(steps=500, batch_size=128, n_docs=300, expansion=4, l1_coefficient=0.3)


@pytest.fixture(scope="module")
def trained(persona_organism, world, tmp_path_factory):
    """Both architectures trained briefly on the pre-trained tiny organism, cached in a temporary folder."""
    cache = tmp_path_factory.mktemp("cache")
    return {
        arch: sae.train_or_load(
            persona_organism,
            world,
            HOOK,
            sae.SAETrainConfig(architecture=arch, k=8, **FAST),
            cache,
            progress=False,
        )
        for arch in sae.ARCHITECTURES
    }


@pytest.mark.parametrize("arch", ["standard", "topk"])
def test_training_reconstructs_well_above_an_untrained_sae(trained, persona_organism, world, arch):
    """On held-out documents (``reconstruction_metrics``' seed, not the training one): the trained SAE
    explains most of the variance (measured 0.93-0.97; untrained: -0.3) and, spliced in, recovers
    most of the loss that zero-ablating its hook costs (0.99; untrained: 0.0-0.06)."""
    trained_sae, folder = trained[arch]
    m = sae.reconstruction_metrics(persona_organism, world, trained_sae, n_docs=200)
    untrained = sae.train_sae(
        sae.training_activations(persona_organism, world, HOOK, 20, 0),
        sae.SAETrainConfig(architecture=arch, k=8, steps=0, batch_size=64, expansion=4),
        HOOK,
        progress=False,
    )
    m0 = sae.reconstruction_metrics(persona_organism, world, untrained, n_docs=200)
    assert m["explained_variance"] > 0.8 and m["explained_variance"] > m0["explained_variance"] + 0.5, (m, m0)
    assert m["loss_recovered"] > 0.9 and m0["loss_recovered"] < 0.5, (m, m0)
    assert 0 <= m["dead_fraction"] < 1
    assert folder.name.startswith(f"{HOOK}-{arch}-") and trained_sae.cfg.metadata.hook_name == HOOK


def test_topk_l0_is_k(trained, persona_organism, world):
    m = sae.reconstruction_metrics(persona_organism, world, trained["topk"][0], n_docs=200)
    assert m["l0"] == pytest.approx(8, abs=0.05)


def test_cache_is_reused_by_config_hash(trained, persona_organism, world):
    sae_, folder = trained["topk"]
    again, folder2 = sae.train_or_load(
        persona_organism,
        world,
        HOOK,
        sae.SAETrainConfig(architecture="topk", k=8, **FAST),
        folder.parent.parent,
    )
    assert folder2 == folder
    torch.testing.assert_close(again.W_dec, sae_.W_dec)
    with pytest.raises(ValueError, match="unknown SAE architecture 'jumpy'; valid: standard, topk"):
        sae.train_sae(torch.zeros(10, 4), sae.SAETrainConfig(architecture="jumpy"), HOOK)


def test_the_sae_cache_carries_checksums(trained, persona_organism, world, tmp_path):
    import shutil

    _, folder = trained["topk"]
    assert (folder / "checksums.json").exists()
    cache = shutil.copytree(folder.parent.parent, tmp_path / "cache")
    weights = cache / "saes" / folder.name / "sae_weights.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-2] ^= 0x01  # still loadable: without the checksum a silently different SAE
    weights.write_bytes(bytes(blob))
    with pytest.raises(
        ValueError,
        match=rf"^cannot read '{weights}': its content changed since caft-tl "
        r"wrote it",
    ):
        sae.train_or_load(
            persona_organism, world, HOOK, sae.SAETrainConfig(architecture="topk", k=8, **FAST), cache
        )


def test_load_round_trip_and_one_line_errors(trained, tiny_model, world, tmp_path):
    sae_ = trained["standard"][0]
    folder = sae.save_sae(sae_, tmp_path / "my_sae")
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    loaded = sae.load_sae(folder, tiny_model, HOOK)
    x = torch.randn(5, tiny_model.cfg.d_model)
    torch.testing.assert_close(sae.encode(loaded, x), sae.encode(sae_, x))
    assert sae.load_folder(tmp_path, tiny_model).keys() == {("standard", HOOK)}

    with pytest.raises(
        ValueError, match=r"reads hook 'blocks.0.hook_resid_post', not 'blocks.1.hook_resid_post'"
    ):
        sae.load_sae(folder, tiny_model, "blocks.1.hook_resid_post")
    wide = models.build_model(
        models.ModelConfig(d_model=48, n_heads=3, d_head=16, d_mlp=64), len(world.vocab), device="cpu"
    )
    with pytest.raises(
        ValueError, match=r"has d_in 32, but 'blocks.0.hook_resid_post' of this model has width 48"
    ):
        sae.load_sae(folder, wide)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = "blocks.7.hook_resid_post"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="layer 7 out of range"):
        sae.load_sae(folder, tiny_model)
    (folder / "sae_weights.safetensors").write_bytes(b"truncated")
    with pytest.raises(ValueError, match=r"cannot load SAE .*my_sae"):
        sae.load_sae(folder)
    with pytest.raises(
        FileNotFoundError, match="is not a SAELens SAE folder: missing cfg.json, sae_weights.safetensors"
    ):
        sae.load_sae(tmp_path, tiny_model)


def planted(tiny_model, v_norm=10.0, planted_latent=5, d_sae=16):
    """A fine-tune that shifts ``HOOK`` by a fixed vector v, and an SAE with v among its latents."""
    g = torch.Generator().manual_seed(0)
    d = tiny_model.cfg.d_model
    v = torch.randn(d, generator=g)
    v = v / v.norm()
    ft = models.copy_model(tiny_model)
    with torch.no_grad():
        ft.blocks[0].mlp.b_out += v_norm * v  # resid_post of block 0 moves by v_norm · v everywhere
    cfg = StandardSAEConfig(d_in=d, d_sae=d_sae)
    cfg.metadata.hook_name = HOOK
    s = StandardSAE(cfg)
    w = torch.randn(d_sae, d, generator=g)
    w[planted_latent] = v
    w = w / w.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        s.W_dec.copy_(w)
        s.W_enc.copy_(w.T)
        s.b_enc.zero_()
        s.b_dec.zero_()
    return ft, s, v


def test_rankings_find_the_planted_latent(tiny_model, world):
    ft, s, v = planted(tiny_model)
    data = world.finetune_dataset(64, seed=0)
    scores = sae.latent_scores(tiny_model, ft, data, s)
    assert list(scores.columns) == ["hook", "latent", *sae.RANKINGS] and len(scores) == 16
    assert sae.rank_latents(scores, "mean_diff", 1) == [5]
    assert sae.rank_latents(scores, "diff_encoding", 1) == [5]
    assert scores["attribution"].abs().sum() > 0
    with pytest.raises(ValueError, match="unknown latent ranking 'magic'; valid: mean_diff"):
        sae.rank_latents(scores, "magic", 1)
    concept = Subspace(HOOK, v[:, None], ["persona"])
    cs = sae.latent_concept_scores(s, [5, 0], {"persona": concept})
    assert cs.loc[0, "persona"] == pytest.approx(1.0, abs=1e-5) and cs.loc[1, "persona"] < 0.9
    assert cs["index"].tolist() == [5, 0]


def test_latent_subspace_is_orthonormal_at_the_hook_and_spans_the_decoders(tiny_model):
    _, s, _ = planted(tiny_model)
    sub = sae.latent_subspace(s, [5, 2, 9])
    assert sub.hook_name == HOOK and sub.k == 3 and sub.labels == ["L5", "L2", "L9"]
    torch.testing.assert_close(sub.basis.T @ sub.basis, torch.eye(3), atol=1e-5, rtol=0)
    dec = sae.decoder_directions(s, [5, 2, 9])
    torch.testing.assert_close((sub.basis @ (sub.basis.T @ dec)), dec, atol=1e-5, rtol=0)
    Intervention("zero", [sub]).check(tiny_model)  # every mode takes it like any other subspace
    with pytest.raises(ValueError, match="no latents chosen"):
        sae.latent_subspace(s, [])
    with pytest.raises(ValueError, match=r"latents \[99\] out of range 0..15"):
        sae.latent_subspace(s, [99])


def test_sae_latent_check_sees_zero_ablation_lower_the_planted_latent(tiny_model, world):
    ft, s, v = planted(tiny_model)
    data = world.finetune_dataset(32, seed=1)
    iv = Intervention("zero", [sae.latent_subspace(s, [5])])
    df = checks.sae_latent_check(ft, data, {"zero": iv}, {HOOK: s}, {HOOK: [5, 0]})
    mean = df.groupby(["condition", "probe"])["activation"].mean()
    assert mean["none", "0 resid_post L5"] > 5 and mean["zero", "0 resid_post L5"] < 1e-4
