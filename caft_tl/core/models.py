"""Build, save and load organism models (HookedTransformer), device choice, hook-name checks."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from caft_tl.core import files
from caft_tl.core.data import TokenDataset

# imported where a model is made: `import transformer_lens` takes ~5 s, which chapters that read no
# model skip
if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


@dataclass
class ModelConfig:
    """Architecture of the organism (a small HookedTransformer trained from scratch)."""

    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    d_head: int = 16
    d_mlp: int = 256
    act_fn: str = "gelu"
    normalization_type: str = "LN"
    n_ctx: int = 16


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def set_cpu_threads(n: int = 1) -> None:
    """Set torch's intra-op threads. The organism's matrices are tiny, so one thread is fastest,
    and with another busy process on the cores, more threads spin-wait (measured on 2 cores:
    0.026 s per fine-tuning step with 1 thread vs 0.9 s with 2 while another job ran)."""
    torch.set_num_threads(max(1, n))


def build_model(
    cfg: ModelConfig, d_vocab: int, seed: int = 0, device: str | None = None
) -> HookedTransformer:
    """A freshly initialised organism model with the given vocabulary size."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tl_cfg = HookedTransformerConfig(
        **dataclasses.asdict(cfg),
        d_vocab=d_vocab,
        seed=seed,
        device=device or default_device(),
        default_prepend_bos=False,
    )
    return HookedTransformer(tl_cfg)


def save_model(
    model: HookedTransformer, path: str | os.PathLike, cfg: ModelConfig, meta: dict | None = None
) -> None:
    """Write ``model.safetensors`` and ``config.json`` (architecture + ``meta``) atomically."""
    path = Path(path)
    files.write_tensors(path / "model.safetensors", parameter_state(model))
    files.write_json(
        path / "config.json",
        {"model": dataclasses.asdict(cfg), "d_vocab": model.cfg.d_vocab, "meta": meta or {}},
    )


def load_model(path: str | os.PathLike, device: str | None = None) -> tuple[HookedTransformer, dict]:
    """Load a model saved by :func:`save_model`; returns (model, meta)."""
    path = Path(path)
    for name in ("config.json", "model.safetensors"):
        if not (path / name).exists():
            raise FileNotFoundError(f"no {name} in model folder {str(path)!r}")
    blob = files.read_json(path / "config.json")
    model = build_model(ModelConfig(**blob["model"]), blob["d_vocab"], device=device)
    state = files.read_tensors(path / "model.safetensors")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k in parameter_state(model)]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {str(path)!r} does not match its config: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}"
        )
    model.eval()
    return model, blob["meta"]


def parameter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without buffers (masks and constants the architecture rebuilds itself)."""
    buffers = {name for name, _ in model.named_buffers()}
    return {k: v for k, v in model.state_dict().items() if k not in buffers}


def weights_hash(model: torch.nn.Module, length: int = 12) -> str:
    """Short hash of a model's parameters: identifies the base model a cached run started from."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:length]


def copy_model(model: HookedTransformer) -> HookedTransformer:
    """An independent copy with the same weights (for fine-tuning from a base).

    Args:
        model: a ``HookedTransformer``.

    Returns:
        A new ``HookedTransformer`` of the same config and weights.

    Example:
        base = copy_model(model)  # keep the base before fine-tuning model in place
    """
    new = type(model)(model.cfg)
    new.load_state_dict(model.state_dict())
    return new


def check_hook_names(model: HookedTransformer, names: list[str] | str) -> list[str]:
    """Validate TransformerLens hook names up front; one readable error naming what is valid.

    Args:
        model: the model whose ``hook_dict`` names the valid hooks.
        names: one hook name or a list.

    Returns:
        The names as a list (a ValueError names the closest valid ones otherwise).

    Example:
        check_hook_names(model, ["blocks.0.hook_resid_post"])
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("no hook names given; e.g. 'blocks.0.hook_resid_post'")
    valid = list(model.hook_dict)
    for name in names:
        if name in model.hook_dict:
            continue
        m = re.match(r"blocks\.(\d+)\.", name)
        if m and int(m.group(1)) >= model.cfg.n_layers:
            raise ValueError(
                f"hook {name!r}: layer {m.group(1)} out of range; this model has layers "
                f"0..{model.cfg.n_layers - 1}"
            )
        close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else f"e.g. {valid[0]}, blocks.0.hook_resid_post"
        raise ValueError(f"unknown hook name {name!r}; {hint}")
    return names


def check_fwd_hooks(model: HookedTransformer, fwd_hooks) -> list[tuple[str, object]]:
    """Validate ``(hook_name, fn)`` pairs for ``model.hooks`` up front (names as
    :func:`check_hook_names`); returns them as a list."""
    pairs = list(fwd_hooks)
    for pair in pairs:
        if not (
            isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str) and callable(pair[1])
        ):
            raise TypeError(
                f"fwd_hooks entry {pair!r} is not a (hook_name, fn) pair; use Intervention.fwd_hooks(batch)"
            )
    if pairs:
        check_hook_names(model, [name for name, _ in pairs])
    return pairs


def response_loss(model: HookedTransformer, batch: TokenDataset, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy over the positions that predict response tokens (mean or sum).

    Args:
        model: the model (its hooks, e.g. an intervention's, apply).
        batch: the tokens [batch, pos] and response mask.
        reduction: ``mean`` or ``sum`` over the response tokens.

    Returns:
        A scalar loss tensor.

    Example:
        with iv.apply(model):
            loss = response_loss(model, data)
    """
    logits = model(batch.tokens)  # [batch, pos, d_vocab]
    mask = batch.target_mask[:, :-1]  # [batch, pos-1]
    targets = batch.tokens[:, 1:]  # [batch, pos-1]
    return F.cross_entropy(logits[:, :-1][mask].float(), targets[mask], reduction=reduction)


class _KLRows(torch.autograd.Function):
    """KL(q ‖ p) per row of logits, with the gradient ``softmax(logits) − softmax(reference)`` written
    out: exactly 0 where the two logits are equal (autograd's log-softmax backward leaves ~1e-8 of
    rounding there, which Adam's normalisation turns into a step on parameters the task leaves alone)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(logits.dtype, torch.float32)  # bfloat16 logits are upcast, float64 kept
        log_p, log_q = F.log_softmax(logits.to(dtype), -1), F.log_softmax(reference_logits.to(dtype), -1)
        ctx.save_for_backward(log_p, log_q)
        ctx.dtype = logits.dtype
        return (log_q.exp() * (log_q - log_p)).sum(-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        log_p, log_q = ctx.saved_tensors
        return (grad[..., None] * (log_p.exp() - log_q.exp())).to(ctx.dtype), None


def kl_rows(logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """``[...]`` KL(reference ‖ model) of the next-token distributions ``[..., d_vocab]``, differentiable
    in ``logits`` only, with an exactly-zero gradient where ``logits`` equal ``reference_logits``."""
    return _KLRows.apply(logits, reference_logits.detach())


def kl_to_reference(
    model: HookedTransformer, reference_logits: torch.Tensor, batch: TokenDataset
) -> torch.Tensor:
    """Mean KL(reference ‖ model) of the next-token distributions over the positions that predict
    ``batch``'s target tokens; ``reference_logits`` [batch, pos, d_vocab] are the reference model's on
    ``batch``."""
    mask = batch.target_mask[:, :-1]  # [batch, pos-1]
    return kl_rows(model(batch.tokens)[:, :-1][mask], reference_logits[:, :-1][mask]).mean()


def residual_hooks(model: HookedTransformer) -> list[str]:
    """Every distinct residual-stream hook point: ``blocks.0.hook_resid_pre`` and each block's
    ``hook_resid_mid`` and ``hook_resid_post``."""
    return ["blocks.0.hook_resid_pre"] + [
        f"blocks.{l}.hook_resid_{p}" for l in range(model.cfg.n_layers) for p in ("mid", "post")
    ]
