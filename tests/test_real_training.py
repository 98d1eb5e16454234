"""Fine-tuning real-model checkpoints on CPU: LoRA under a TL-hook intervention, the base model as
an adapters-off view, micro-batches (gradient accumulation), halving on out-of-memory, bf16."""

import pytest
import torch

from caft_tl.core.subspace import random_subspace
from caft_tl.interventions.intervention import Intervention
from caft_tl.real import chat_data, hf_models, loading, lora
from caft_tl.training.loop import FinetuneConfig, finetune
from tests._real import EXAMPLES, checkpoints  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def train_data(checkpoints):
    tok = hf_models.load_tokenizer(checkpoints["qwen2"])
    return chat_data.load_chat_jsonl(EXAMPLES / "insecure_tiny.jsonl", tok)


class CountingIntervention(Intervention):
    calls: int = 0

    def fwd_hooks(self, batch=None):
        def wrap(fn):
            def hook(act, hook):
                CountingIntervention.calls += 1
                return fn(act, hook)

            return hook

        return [(name, wrap(fn)) for name, fn in super().fwd_hooks(batch)]


def test_lora_trains_only_adapters_under_an_intervention(checkpoints, train_data, tmp_path):
    model = loading.load(checkpoints["qwen2"], device="cpu")
    base_logits = model(train_data.tokens[:2]).detach()
    lora.add_lora(model, lora.LoraSettings(rank=8, alpha=16, rslora=False), seed=0)
    assert torch.allclose(model(train_data.tokens[:2]), base_logits, atol=1e-6)  # B = 0 at start
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    iv = CountingIntervention(
        "zero", [random_subspace(model.cfg.d_model, 2, "blocks.0.hook_resid_post", seed=0)]
    )
    CountingIntervention.calls = 0
    losses = finetune(model, train_data, FinetuneConfig(batch_size=4, lr=2e-2, epochs=8), iv, progress=False)
    assert CountingIntervention.calls == len(losses) == 16
    assert (
        sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1
    )  # slow: a random tiny model's residual stream is small
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if "lora_" not in n)
    assert any(p.abs().max() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    base = lora.AdaptersOff(model)
    with torch.no_grad():
        assert torch.allclose(base(train_data.tokens[:2]), base_logits, atol=1e-6)
        assert (model(train_data.tokens[:2]) - base_logits).abs().max() > 1e-3
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())
    lora.save_adapter(model, tmp_path / "adapter.safetensors")
    fresh = lora.add_lora(
        loading.load(checkpoints["qwen2"], device="cpu"),
        lora.LoraSettings(rank=8, alpha=16, rslora=False),
        seed=1,
    )
    lora.load_adapter(fresh, tmp_path / "adapter.safetensors")
    with torch.no_grad():
        assert torch.allclose(fresh(train_data.tokens[:2]), model(train_data.tokens[:2]), atol=1e-5)


def test_lora_targets_are_checked(checkpoints):
    model = loading.load(checkpoints["llama"], device="cpu")
    with pytest.raises(
        ValueError, match=r"LoRA targets \['c_attn'\] are not linear modules of this model; valid: .*q_proj"
    ):
        lora.add_lora(model, lora.LoraSettings(targets=["c_attn"]))


def test_micro_batches_accumulate_to_the_full_batch_and_halve_on_oom(checkpoints, train_data):
    cfg = FinetuneConfig(batch_size=8, lr=1e-3, epochs=3)
    full = finetune(loading.load(checkpoints["llama"], device="cpu"), train_data, cfg, progress=False)
    micro = finetune(
        loading.load(checkpoints["llama"], device="cpu"), train_data, cfg, progress=False, micro_batch_size=3
    )
    assert max(abs(a - b) for a, b in zip(full, micro)) < 1e-4

    model = loading.load(checkpoints["llama"], device="cpu")
    seen = []
    forward = model.forward

    def small_memory(tokens, *args, **kwargs):  # "out of memory" above 2 rows
        seen.append(tokens.shape[0])
        if tokens.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(tokens, *args, **kwargs)

    model.forward = small_memory
    halved = finetune(model, train_data, cfg, progress=False)
    assert seen[:4] == [8, 4, 2, 2] and max(seen[4:]) == 2
    assert max(abs(a - b) for a, b in zip(full, halved)) < 1e-4


def test_bf16_lora_on_cpu(checkpoints, train_data):
    model = loading.load(checkpoints["qwen2"], device="cpu", dtype="bfloat16")
    assert model(train_data.tokens[:1]).dtype == torch.bfloat16
    lora.add_lora(model, lora.LoraSettings(rank=4, alpha=8), seed=0)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)
    iv = Intervention("zero", [random_subspace(model.cfg.d_model, 2, "blocks.1.hook_resid_post", seed=0)])
    losses = finetune(model, train_data, FinetuneConfig(batch_size=4, lr=1e-2, epochs=4), iv, progress=False)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    with pytest.raises(ValueError, match="unknown dtype 'bf16'; valid: float32, bfloat16, float16"):
        loading.load(checkpoints["qwen2"], dtype="bf16")
