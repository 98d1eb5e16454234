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
:func:`load_hf` puts the checked one in its place afterwards.

A third trap, in generation: transformers 5.x passes the KV cache to the attention modules as
``cache=`` (``past_key_values`` is deprecated), while TL 3.9's re-implemented attention
(``AttentionBridge._update_kv_cache``) reads only ``past_key_values`` / ``layer_past``. The cache
then stays empty, every decoding step attends to its own token alone, and ``bridge.generate`` (and
HF's ``generate`` on the wrapped model) gives garbage ("The------" on SmolLM2) while one forward
pass is exact. :func:`load_hf` installs :func:`patch_kv_cache` (tested: cached generation equals
uncached generation, with hooks on).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

#: dtype name -> torch dtype (a notebook parameter names one of these)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: a Qwen-style chat template (no default system prompt) for the tiny test tokenizers
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_PROBE = "hello world"


#: a dtype parameter that picks bfloat16 where the device computes it natively, float32 elsewhere
AUTO_DTYPE = "auto"


def native_bfloat16(device: str = "cpu") -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a CUDA device that supports it, or
    a CPU with AVX-512 BF16 or AMX (where oneDNN runs bfloat16 about twice as fast as float32;
    without them it emulates bfloat16, slower than float32)."""
    if str(device).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return any(
        bool(getattr(cpu, f, lambda: False)())
        for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )


def resolve_dtype(name: str, device: str = "cpu") -> str:
    """A dtype parameter → a :data:`DTYPES` name: :data:`AUTO_DTYPE` is ``bfloat16`` where
    :func:`native_bfloat16`, else ``float32``; any other name is checked and returned."""
    if name == AUTO_DTYPE:
        return "bfloat16" if native_bfloat16(device) else "float32"
    torch_dtype(name)
    return name


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        hint = f" ({AUTO_DTYPE!r} is resolved by resolve_dtype first)" if name == AUTO_DTYPE else ""
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}{hint}")
    return DTYPES[name]


#: what to do about a broken file of a Hugging Face model folder
_FIX_HF = "re-download the model (or re-save it with save_pretrained)"
#: the files of which a folder needs at least one to have a tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_folder(folder: str | os.PathLike) -> Path:
    """Check a local HF model folder before loading it, each failure one line naming the file:
    ``config.json`` present and valid JSON, every ``*.safetensors`` file whole (its header parses
    and its data ends where the header says: a truncated file is caught without reading the
    weights), and a tokenizer (one of :data:`TOKENIZER_FILES`; ``tokenizer.json`` valid JSON)."""
    import json
    import struct

    from caft_tl.core import files

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"no config.json in model folder {str(folder)!r}: not a Hugging Face model folder; {_FIX_HF}"
        )
    files.read_json(folder / "config.json", fix=_FIX_HF)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and not list(folder.glob("*.bin")):
        raise FileNotFoundError(f"no weights (*.safetensors) in model folder {str(folder)!r}; {_FIX_HF}")
    for w in weights:
        size = w.stat().st_size
        try:
            with open(w, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n)) if 8 + n <= size else None
            end = (
                max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
                if header
                else None
            )
        except (struct.error, ValueError, KeyError, TypeError, IndexError):
            end = None
        if end is None or 8 + n + end != size:
            raise files.CorruptFileError(
                f"cannot read {str(w)!r}: truncated or corrupted safetensors file "
                f"({size} bytes{'' if end is None else f', header says {8 + n + end}'}); {_FIX_HF}"
            )
    if not any((folder / t).exists() for t in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"no tokenizer in model folder {str(folder)!r} (none of {', '.join(TOKENIZER_FILES)}); "
            "copy the tokenizer files of the base model into it (tokenizer.save_pretrained)"
        )
    if (folder / "tokenizer.json").exists():
        files.read_json(folder / "tokenizer.json", fix=_FIX_HF)
    return folder


def load_tokenizer(name_or_path: str | os.PathLike):
    """The model's tokenizer, checked against the folder's own ``tokenizer.json``.

    ``AutoTokenizer`` picks a class by model type; for a Qwen2 folder whose ``tokenizer.json`` is
    not Qwen's byte-level BPE, the ``Qwen2Tokenizer`` it returns ignores that file and encodes to
    ``[]`` or to unrelated ids. When its encoding of a probe text differs from the file's, the
    file is used as it is (generic fast tokenizer); a tokenizer that encodes to nothing is refused.

    Args:
        name_or_path: a local HF folder or a hub name.

    Returns:
        A ``transformers`` tokenizer.

    Example:
        tok = load_tokenizer("/models/Qwen2.5-0.5B-Instruct")
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if Path(name_or_path).is_dir():
        check_folder(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError, TypeError) as e:  # HF's messages run over many lines
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ValueError(f"cannot load the tokenizer of {str(name_or_path)!r}: {first}") from None
    file = Path(name_or_path) / "tokenizer.json"
    if file.exists():
        from tokenizers import Tokenizer

        raw = Tokenizer.from_file(str(file))
        probe = _PROBE + " " + raw.decode(list(range(len(SPECIAL_TOKENS), min(raw.get_vocab_size(), 40))))
        if _ids(tok, probe) != raw.encode(probe, add_special_tokens=False).ids:
            tok = PreTrainedTokenizerFast.from_pretrained(str(name_or_path))
    if not _ids(tok, _PROBE):
        raise ValueError(
            f"tokenizer of {str(name_or_path)!r} ({type(tok).__name__}) encodes text to no tokens"
        )
    return tok


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def patch_kv_cache() -> None:
    """Make TL's attention bridges read transformers 5.x's ``cache=`` keyword (see the module's
    docstring). Idempotent, and a no-op once TL reads ``cache`` itself."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    update = AttentionBridge._update_kv_cache
    if getattr(update, "_reads_cache_kwarg", False):
        return

    def _update_kv_cache(self, k, v, **kwargs):
        if (
            kwargs.get("past_key_values") is None
            and kwargs.get("layer_past") is None
            and kwargs.get("cache") is not None
        ):
            kwargs["past_key_values"] = kwargs["cache"]
        return update(self, k, v, **kwargs)

    _update_kv_cache._reads_cache_kwarg = True
    AttentionBridge._update_kv_cache = _update_kv_cache
    import warnings

    # TL's generation loop passes ``past_key_values=`` to the HF model, which renames it and warns every call
    warnings.filterwarnings("ignore", message=r"`past_key_values` is deprecated", category=FutureWarning)


def _contiguous_input(module, args):
    return (args[0].contiguous(), *args[1:])


def contiguous_unembed(hf_model) -> None:
    """Give the HF model's unembedding a contiguous input. With ``logits_to_keep`` HF unembeds
    ``hidden[:, -keep:]``, a strided view, and torch's ``linear`` on a strided 3-D input broadcasts
    the [d_vocab, d_model] weight to one copy per sequence (a 906 MB copy per batch of 16 on
    SmolLM2): 60× slower in bfloat16 and 3.4× in float32 than on the same rows made contiguous,
    measured on 2 CPU cores. Idempotent."""
    head = hf_model.get_output_embeddings()
    if head is not None and _contiguous_input not in head._forward_pre_hooks.values():
        head.register_forward_pre_hook(_contiguous_input)


def load_hf(name_or_path: str | os.PathLike, device: str | None = None, dtype: str = "float32"):
    """A local HF folder (or a hub name, with network) → ``TransformerBridge`` in eval mode."""
    from transformer_lens.model_bridge import TransformerBridge

    from caft_tl.core.models import default_device

    patch_kv_cache()
    path = str(name_or_path)
    if not Path(path).exists() and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise FileNotFoundError(
            f"no model folder {path!r}; give a local HF folder or a hub name like "
            "'Qwen/Qwen2.5-0.5B-Instruct'"
        )
    if Path(path).is_dir():
        check_folder(path)  # one-line errors naming a broken file, before transformers reads it
    model = TransformerBridge.boot_transformers(
        path, device=device or default_device(), dtype=torch_dtype(dtype), tokenizer=load_tokenizer(path)
    )
    # TL re-reads the tokenizer by name (AutoTokenizer: the trap again), and its ``tokenizer`` setter
    # would do so once more and reset d_vocab to the tokenizer's size: set the checked one directly
    model._tokenizer = load_tokenizer(path)
    contiguous_unembed(model.original_model)
    model.eval()
    return model


def is_bridge(model) -> bool:
    from transformer_lens.model_bridge import TransformerBridge

    return isinstance(model, TransformerBridge)


def final_norm_gain(model) -> torch.Tensor:
    """[d_model] the final norm's elementwise gain, so that a direction's logit lens is
    ``(gain * q) @ W_U`` as the model reads it. A TransformerBridge keeps the HF norm's ``weight``
    (SmolLM2's has mean 1.8, sd 0.3), a HookedTransformer its ``ln_final.w``; where ``fold_ln``
    has moved the gain into ``W_U``, or there is no final norm: ones."""
    ln = getattr(model, "ln_final", None)
    inner = getattr(ln, "_original_component", ln)
    for name in ("weight", "w"):
        w = getattr(inner, name, None)
        if isinstance(w, torch.Tensor) and w.shape == (model.cfg.d_model,):
            return w.detach()
    return torch.ones(model.cfg.d_model, device=model.W_U.device)


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
