"""Local HF checkpoints through TransformerBridge: logits equal to HF, the tokenizer and
compatibility-mode traps, hook names and interventions (forward and backward) on the bridge."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from caft_tl.core import models
from caft_tl.core.subspace import random_subspace
from caft_tl.interventions.intervention import Intervention
from caft_tl.real import hf_models, loading
from tests._real import TINY_ARCHS, checkpoints  # noqa: F401  (fixture)

TOKENS = torch.tensor([[1, 5, 9, 12, 30, 2, 7, 40], [1, 6, 6, 8, 2, 3, 50, 11]])


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_bridge_logits_equal_hf(checkpoints, arch):
    bridge = loading.load(checkpoints[arch], device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(checkpoints[arch]).eval()
    with torch.no_grad():
        gap = (bridge(TOKENS) - hf(TOKENS).logits).abs().max().item()
    assert gap < 1e-5
    assert models.check_hook_names(bridge, ["blocks.0.hook_resid_post", "blocks.1.hook_resid_mid"])
    with pytest.raises(ValueError, match="layer 7 out of range"):
        models.check_hook_names(bridge, "blocks.7.hook_resid_post")


def test_unembedding_reads_a_contiguous_input_and_keeps_its_logits(checkpoints):
    bridge = loading.load(checkpoints["qwen2"], device="cpu")
    head = bridge.original_model.get_output_embeddings()
    hf_models.contiguous_unembed(bridge.original_model)  # idempotent: one hook, however often
    assert list(head._forward_pre_hooks.values()) == [hf_models._contiguous_input]
    seen = []
    handle = head.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    with torch.no_grad():
        kept = bridge.original_model(
            TOKENS, logits_to_keep=3
        ).logits  # HF slices hidden[:, -3:]: a strided view
        full = bridge(TOKENS)
    handle.remove()
    assert seen == [True, True] and kept.shape[1] == 3
    assert torch.allclose(kept, full[:, -3:], atol=1e-5)


def test_qwen2_tokenizer_trap_is_repaired(checkpoints):
    folder = checkpoints["qwen2"]
    assert AutoTokenizer.from_pretrained(folder)("user assistant")["input_ids"] != [4, 5]  # the trap itself
    tok = hf_models.load_tokenizer(folder)
    assert tok("user assistant", add_special_tokens=False)["input_ids"] == [4, 5]
    bridge = hf_models.load_hf(folder, device="cpu")
    assert bridge.tokenizer("user assistant", add_special_tokens=False)["input_ids"] == [4, 5]
    assert bridge.cfg.d_vocab == AutoModelForCausalLM.from_pretrained(folder).config.vocab_size


def test_compatibility_mode_changes_rmsnorm_outputs_unless_processing_is_off(checkpoints):
    hf = AutoModelForCausalLM.from_pretrained(checkpoints["qwen2"]).eval()
    with torch.no_grad():
        ref = hf(TOKENS).logits
        processed = hf_models.load_hf(checkpoints["qwen2"], device="cpu")
        processed.enable_compatibility_mode()
        raw = hf_models.load_hf(checkpoints["qwen2"], device="cpu")
        raw.enable_compatibility_mode(no_processing=True)
        assert (processed(TOKENS) - ref).abs().max() > 1e-3  # the trap: load_hf never does this
        assert (raw(TOKENS) - ref).abs().max() < 1e-5


def test_unknown_model_path_is_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model folder"):
        loading.load(tmp_path / "nope")


def test_organism_folders_still_load_as_hooked_transformers(tiny_model, tmp_path):
    models.save_model(
        tiny_model, tmp_path / "org", models.ModelConfig(d_model=32, n_heads=2, d_head=16, d_mlp=64)
    )
    loaded = loading.load(tmp_path / "org", device="cpu")
    assert type(loaded).__name__ == "HookedTransformer"
    assert torch.equal(loaded(TOKENS[:, :6] % 20), tiny_model(TOKENS[:, :6] % 20))


def test_interventions_on_the_bridge_match_an_hf_hook_and_project_gradients(checkpoints):
    folder = checkpoints["llama"]
    bridge = loading.load(folder, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    sub = random_subspace(bridge.cfg.d_model, 3, "blocks.0.hook_resid_post", seed=1)
    iv = Intervention("zero", [sub])
    iv.check(bridge)
    q = sub.basis

    def hf_hook(module, args, output):  # the reference implementation's projection on the layer output
        h = output[0] if isinstance(output, tuple) else output
        h = h - (h @ q) @ q.T
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = hf.model.layers[0].register_forward_hook(hf_hook)
    with torch.no_grad(), bridge.hooks(fwd_hooks=iv.fwd_hooks()):
        gap = (bridge(TOKENS) - hf(TOKENS).logits).abs().max().item()
    handle.remove()
    assert gap < 1e-5

    seen = {}

    def keep(act, hook):
        act.retain_grad()
        seen["h"] = act
        return act

    with bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_post", keep), *iv.fwd_hooks()]):
        bridge(TOKENS).logsumexp(-1).sum().backward()
    grad = seen["h"].grad  # [batch, pos, d_model]: the gradient reaching the un-ablated activation
    assert grad.abs().max() > 1e-4
    assert (grad @ q).abs().max() < 1e-6  # (I − P): nothing flows back through the ablated subspace
