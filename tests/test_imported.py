"""Imported directions: each tool's layer convention maps to the right TransformerLens hook."""

import json

import numpy as np
import pytest
import torch

from caft_tl.directions import imported


def test_conventions_name_the_same_hook_for_the_same_activation(tiny_model, world):
    n = tiny_model.cfg.n_layers
    tokens = world.finetune_dataset(8).tokens
    _, cache = tiny_model.run_with_cache(tokens)
    for layer in range(n):  # hidden_states[L] is what enters block L
        assert torch.equal(
            cache[imported.hook_for(layer, "hidden_states", n)], cache[f"blocks.{layer}.hook_resid_pre"]
        )
    assert imported.hook_for(n, "hidden_states", n) == f"blocks.{n - 1}.hook_resid_post"
    assert [imported.hook_for(l, "layer_output", n) for l in range(n)] == [
        imported.hook_for(l + 1, "hidden_states", n) for l in range(n)
    ]


def test_bad_layers_and_conventions_fail_in_one_line():
    with pytest.raises(
        ValueError, match=r"unknown layer convention 'hf'; valid: hidden_states, layer_output"
    ):
        imported.hook_for(1, "hf", 2)
    with pytest.raises(
        ValueError, match=r"layer 2 is out of range for 'layer_output' on a 2-layer model; valid: 0..1"
    ):
        imported.hook_for(2, "layer_output", 2)


def test_persona_vectors_rows_are_hidden_states():
    vectors = torch.randn(3, 16)  # a 2-layer model: embeddings + 2 block outputs
    subs = imported.persona_vectors(vectors, [0, 2], n_layers=2)
    assert [s.hook_name for s in subs] == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"]
    assert torch.allclose(subs[1].basis[:, 0], vectors[2] / vectors[2].norm())
    assert subs[1].provenance["norm"] == pytest.approx(vectors[2].norm().item())
    with pytest.raises(
        ValueError, match=r"persona vectors have shape \(2, 16\); expected \[n_layers \+ 1 = 3, d_model\]"
    ):
        imported.persona_vectors(torch.randn(2, 16), [0], n_layers=2)


def test_caft_pca_files(tmp_path):
    pcs = np.linalg.qr(np.random.default_rng(0).normal(size=(16, 4)))[0].T.astype(
        np.float32
    )  # [4 PCs, d_model 16]
    np.save(tmp_path / "pcs1.npy", pcs)
    config = tmp_path / "iv.json"
    config.write_text(json.dumps({"path": str(tmp_path / "pcs"), "dict": {"1": [0, 2]}}))
    (sub,) = imported.caft_pcs(config)
    assert sub.hook_name == "blocks.1.hook_resid_post" and sub.k == 2
    proj = sub.basis @ sub.basis.T  # the chosen PCs lie in the subspace, the others are orthogonal to it
    assert torch.allclose(proj @ torch.from_numpy(pcs[2]), torch.from_numpy(pcs[2]), atol=1e-5)
    assert (proj @ torch.from_numpy(pcs[1])).norm() < 1e-5
    config.write_text(json.dumps({"path": str(tmp_path / "pcs"), "dict": {"1": "random"}}))
    with pytest.raises(
        ValueError, match=r"layer 1 chooses 'random'; valid: 'all' or a non-empty list of PC indices 0..3"
    ):
        imported.caft_pcs(config)
