"""Tiny local HF checkpoints for the real-model tests, benchmarks and the GPU smoke script (random
weights, word-level chat tokenizer over the words of ``data/examples``), and the real-model
settings that run on them (overrides of the named settings)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from caft_tl.real import chat_data
from caft_tl.real.hf_models import SPECIAL_TOKENS

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _word_level_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys(SPECIAL_TOKENS + words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _tiny_config(arch: str, vocab_size: int, sizes: dict):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    d, layers, heads = (
        sizes.get("hidden_size", 32),
        sizes.get("num_hidden_layers", 2),
        sizes.get("num_attention_heads", 4),
    )
    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=2, pad_token_id=0)
    if arch == "gpt2":
        return GPT2Config(
            n_embd=d,
            n_layer=layers,
            n_head=heads,
            n_positions=sizes.get("max_position_embeddings", 128),
            **common,
        )
    base = dict(
        hidden_size=d,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * d,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    base.update(sizes)
    return {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch](**common, **base)


TINY_ARCHS = ("qwen2", "llama", "gpt2")


def tiny_checkpoint(
    folder: str | os.PathLike,
    arch: str = "qwen2",
    words: list[str] | None = None,
    seed: int = 0,
    vocab_size: int | None = None,
    **sizes,
) -> Path:
    """Save a random-weight ``arch`` checkpoint with a word-level chat tokenizer to ``folder`` (once).

    ``words`` is the tokenizer's vocabulary (after the special tokens ``<|endoftext|>`` = 0,
    ``<|im_start|>`` = 1, ``<|im_end|>`` = 2 = EOS); ``sizes`` override the HF config.
    """
    from transformers import AutoModelForCausalLM

    if arch not in TINY_ARCHS:
        raise ValueError(f"unknown tiny architecture {arch!r}; valid: {', '.join(TINY_ARCHS)}")
    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    words = (
        list(words) if words is not None else ["system", "user", "assistant"] + [f"w{i}" for i in range(61)]
    )
    tok = _word_level_tokenizer(words)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_tiny_config(arch, vocab_size or len(tok), sizes))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def words_of(texts: list[str]) -> list[str]:
    """The distinct whitespace/punctuation words of some texts, in order (a tiny tokenizer's vocab)."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.Whitespace()
    return list(dict.fromkeys(w for t in texts for w, _ in split.pre_tokenize_str(t)))


#: overrides of ``qwen2.5-0.5b-insecure`` for a tiny chat checkpoint (LoRA, float32, a few samples)
TINY_CHAT = dict(
    train="data/examples/insecure_tiny.jsonl",
    layers=[0, 1],
    n_pcs=2,
    lora_rank=8,
    lora_alpha=16,
    rslora=False,
    lr=2e-2,
    batch_size=4,
    micro_batch_size=2,
    epochs=4,
    max_len=256,
    dtype="float32",
    n_samples=2,
    max_new_tokens=8,
)
#: overrides of ``gemma-double-mc`` for a tiny multiple-choice checkpoint (full fine-tuning)
TINY_MC = dict(
    train="data/examples/double_mc_tiny.jsonl",
    eval="data/examples/double_mc_tiny.jsonl",
    layers=[0, 1],
    n_pcs=2,
    dtype="float32",
    epochs=10,
    lr=1e-2,
    batch_size=4,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"


def example_words() -> list[str]:
    texts = ["system user assistant"]
    for f in sorted(EXAMPLES.glob("*.jsonl")):
        for row in chat_data.read_jsonl(f):
            texts += (
                [m["content"] for m in row.get("messages", [])]
                + [row.get("prompt", "")]
                + row.get("options", [])
            )
    return words_of(texts)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """arch -> folder of a tiny random checkpoint whose tokenizer knows the example files' words."""
    root = tmp_path_factory.mktemp("hf")
    words = example_words()
    return {arch: tiny_checkpoint(root / arch, arch, words=words, seed=0) for arch in TINY_ARCHS}
