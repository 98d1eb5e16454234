"""Hugging Face checkpoints as hooked models with TransformerLens hook names.

Route: ``TransformerBridge.boot_transformers`` (TransformerLens 3.x). It wraps the HF model's own
modules, so a local folder loads offline and the logits equal the HF model's (~1e-7, tested for
Qwen2, Llama and GPT-2), while hook names, ``model.hooks``, ``run_with_cache`` and backward work as
on a ``HookedTransformer`` (``blocks.{l}.hook_resid_post`` is an alias of the layer's output).
``HookedTransformer.from_pretrained`` is not used: in TL 3.x it refuses local paths and reaches
for the hub even when given ``hf_model=``.

Two traps this module guards against (both tested):

* ``AutoTokenizer`` on a Qwen2 folder whose ``tokenizer.json`` is not a byte-level BPE returns a
  ``Qwen2Tokenizer`` that silently encodes text to ``[]`` (or to unrelated ids).
  :func:`load_tokenizer` compares it with the folder's ``tokenizer.json`` and uses the file.
* ``enable_compatibility_mode()`` folds weights (e.g. RMSNorm scales) and changes outputs of
  RMSNorm models unless weight processing is off; :func:`load_hf` never calls it.

TL re-reads the tokenizer by name while booting (with ``AutoTokenizer``, so the first trap again):
:func:`load_hf` puts the checked one in its place afterwards. :func:`tiny_checkpoint` writes small random-weight checkpoints (with a word-level tokenizer
and a chat template) for tests and smoke runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

#: dtype name -> torch dtype (a notebook parameter names one of these)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: a Qwen-style chat template (no default system prompt) for the tiny test tokenizers
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_PROBE = "hello world"


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[name]


def load_tokenizer(name_or_path: str | os.PathLike):
    """The model's tokenizer, checked against the folder's own ``tokenizer.json``.

    ``AutoTokenizer`` picks a class by model type; for a Qwen2 folder whose ``tokenizer.json`` is
    not Qwen's byte-level BPE, the ``Qwen2Tokenizer`` it returns ignores that file and encodes to
    ``[]`` or to unrelated ids. When its encoding of a probe text differs from the file's, the
    file is used as it is (generic fast tokenizer); a tokenizer that encodes to nothing is refused.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = AutoTokenizer.from_pretrained(str(name_or_path))
    file = Path(name_or_path) / "tokenizer.json"
    if file.exists():
        from tokenizers import Tokenizer

        raw = Tokenizer.from_file(str(file))
        probe = _PROBE + " " + raw.decode(list(range(len(SPECIAL_TOKENS), min(raw.get_vocab_size(), 40))))
        if _ids(tok, probe) != raw.encode(probe, add_special_tokens=False).ids:
            tok = PreTrainedTokenizerFast.from_pretrained(str(name_or_path))
    if not _ids(tok, _PROBE):
        raise ValueError(f"tokenizer of {str(name_or_path)!r} ({type(tok).__name__}) encodes text to no tokens")
    return tok


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def load_hf(name_or_path: str | os.PathLike, device: str | None = None, dtype: str = "float32"):
    """A local HF folder (or a hub name, with network) → ``TransformerBridge`` in eval mode."""
    from transformer_lens.model_bridge import TransformerBridge

    from caft_tl.core.models import default_device

    path = str(name_or_path)
    if not Path(path).exists() and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise FileNotFoundError(f"no model folder {path!r}; give a local HF folder or a hub name like 'Qwen/Qwen2.5-0.5B-Instruct'")
    model = TransformerBridge.boot_transformers(
        path, device=device or default_device(), dtype=torch_dtype(dtype), tokenizer=load_tokenizer(path)
    )
    # TL re-reads the tokenizer by name (AutoTokenizer: the trap again), and its ``tokenizer`` setter
    # would do so once more and reset d_vocab to the tokenizer's size: set the checked one directly
    model._tokenizer = load_tokenizer(path)
    model.eval()
    return model


def is_bridge(model) -> bool:
    from transformer_lens.model_bridge import TransformerBridge

    return isinstance(model, TransformerBridge)


def _word_level_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys(SPECIAL_TOKENS + words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", additional_special_tokens=SPECIAL_TOKENS[1:])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _tiny_config(arch: str, vocab_size: int, sizes: dict):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    d, layers, heads = sizes.get("hidden_size", 32), sizes.get("num_hidden_layers", 2), sizes.get("num_attention_heads", 4)
    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=2, pad_token_id=0)
    if arch == "gpt2":
        return GPT2Config(n_embd=d, n_layer=layers, n_head=heads, n_positions=sizes.get("max_position_embeddings", 128), **common)
    base = dict(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * d,
                num_key_value_heads=max(1, heads // 2), max_position_embeddings=128, tie_word_embeddings=False)
    base.update(sizes)
    return {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch](**common, **base)


TINY_ARCHS = ("qwen2", "llama", "gpt2")


def tiny_checkpoint(folder: str | os.PathLike, arch: str = "qwen2", words: list[str] | None = None, seed: int = 0,
                    vocab_size: int | None = None, **sizes) -> Path:
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
    words = list(words) if words is not None else ["system", "user", "assistant"] + [f"w{i}" for i in range(61)]
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


class TokenizerVocab:
    """A tokenizer seen as the organism's ``vocab`` (``tokens``, ``to_str_tokens``), so
    :func:`caft_tl.directions.interpret.top_examples` and ``logit_lens`` display real models' tokens."""

    def __init__(self, tokenizer, d_vocab: int):
        self.tokenizer = tokenizer
        self.tokens = [self._show(i) for i in range(d_vocab)]

    def _show(self, i: int) -> str:
        return self.tokenizer.decode([i]) if i < len(self.tokenizer) else f"<{i}>"

    def to_str_tokens(self, ids) -> list[str]:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return [self.tokens[i] for i in ids]
