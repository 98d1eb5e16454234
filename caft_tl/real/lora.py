"""LoRA adapters (peft) on a ``TransformerBridge``, under the same TL hook points.

Adapters are injected into the bridged HF modules in place (``peft.inject_adapter_in_model``),
so the bridge, its hook names and caft-tl's interventions are unchanged and only the adapter
weights train. The bridge wraps each HF ``Linear`` as ``<name>._original_component``; the target
pattern matches those. :class:`AdaptersOff` shows the same weights as the base model (adapters
disabled) without a second copy in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from caft_tl.core import files
from caft_tl.training.trainable import Trainable

#: the projections the CAFT paper adapts (Qwen2 / Llama / Mistral / Gemma names)
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (defaults: the CAFT paper's EM runs: r 32, α 64, rsLoRA).

    Args:
        rank: r; alpha: α; rslora: scale by α / √r (rsLoRA) instead of α / r; dropout: on the adapters' input.
        targets: the linear modules to adapt, by their last name (``q_proj``, ``down_proj``, ...).

    Example:
        add_lora(model, LoraSettings(rank=8, targets=["q_proj", "v_proj"]))
    """

    rank: int = 32
    alpha: float = 64.0
    rslora: bool = True
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))


def _pattern(targets: list[str], bridged: bool) -> str:
    names = "|".join(re.escape(t) for t in targets)
    return rf"(.*\.)?({names})" + (r"\._original_component" if bridged else "")


def add_lora(model, settings: LoraSettings, seed: int = 0):
    """Inject LoRA adapters into ``model`` (in place) and freeze everything else; returns ``model``.

    LoRA's B starts at zero, so the adapted model equals the base model until it trains.

    Args:
        model: a ``TransformerBridge`` (or a plain HF / torch model) with the target linear modules.
        settings: the :class:`LoraSettings`.
        seed: the adapters' initialisation seed.

    Returns:
        ``model``, with only its ``lora_`` parameters requiring grad (float32 on any base dtype).

    Example:
        model = add_lora(load("smollm2-135m"), LoraSettings(rank=8))
        finetune(model, data, FinetuneConfig(lr=1e-3), intervention=iv)  # trains the adapters only
    """
    from peft import LoraConfig, inject_adapter_in_model

    if settings.rank < 1:
        raise ValueError(f"LoRA rank {settings.rank} must be >= 1")
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    bridged = any(n.endswith("._original_component") for n in linear)
    leaves = {n.removesuffix("._original_component").split(".")[-1] for n in linear}
    missing = [t for t in settings.targets if t not in leaves]
    if missing:
        raise ValueError(
            f"LoRA targets {missing} are not linear modules of this model; valid: {', '.join(sorted(leaves))}"
        )
    cfg = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        use_rslora=settings.rslora,
        lora_dropout=settings.dropout,
        target_modules=_pattern(settings.targets, bridged),
    )
    torch.manual_seed(seed)
    inject_adapter_in_model(cfg, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    for m in model.modules():  # adapters train in float32 even on a bf16 base
        if hasattr(m, "lora_A"):
            m.lora_A.float()
            m.lora_B.float()
    return model


def reset_adapters(model, seed: int = 0):
    """Re-initialise every LoRA adapter in place from ``seed`` (A as peft initialises it, B = 0), so
    the model equals its base again and the next fine-tune starts fresh without reloading the
    model; the same seed gives the same adapters. Returns ``model``."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if not layers:
        raise ValueError("the model has no LoRA adapters to reset; add them with add_lora first")
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in layers:
            for name in m.lora_A:
                m.reset_lora_parameters(name, True)
    return model


def adapter_state(model) -> dict[str, torch.Tensor]:
    """A copy of the adapter weights only (what a LoRA fine-tune changed)."""
    return {
        n: p.detach().cpu().clone() for n, p in model.named_parameters() if "lora_" in n
    }  # copies, not views


def save_adapter(model, path: str | os.PathLike) -> None:
    files.write_tensors(path, adapter_state(model))


def load_adapter(model, path: str | os.PathLike) -> None:
    """Load weights saved by :func:`save_adapter` into a model with the same adapters."""
    state = files.read_tensors(path)
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing or not state:
        raise ValueError(
            f"adapter file {str(path)!r} does not match this model's adapters (e.g. {missing[:1]})"
        )
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def has_adapters(model) -> bool:
    return any("lora_" in n for n, _ in model.named_parameters())


@contextlib.contextmanager
def adapters_disabled(model):
    """Run ``model`` as its base model: every LoRA layer bypassed inside the block."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield model
    finally:
        for m in layers:
            m.enable_adapters(True)
        for name, p in model.named_parameters():  # enable_adapters re-enables grads; keep the base frozen
            p.requires_grad_(p.requires_grad and "lora_" in name)


class AdaptersOff(Trainable):
    """The base model as a view of an adapted one: forward passes, caches and generation run with
    adapters disabled; everything else (``cfg``, ``hook_dict``, ``hooks``, …) is the model's. As a
    :class:`~caft_tl.training.trainable.Trainable`, each fine-tune re-initialises the adapters of the
    one adapted model from its seed and a kept fine-tune saves its adapters only.

    Example:
        >>> base = AdaptersOff(add_lora(bridge, LoraSettings(rank=8)))
        >>> finetunes.run_finetunes(run_dir, base, world, jobs)  # adapters reset per seed
    """

    weights_file = "adapter.safetensors"

    def __init__(self, model):
        self._model = model

    @property
    def model(self):
        return self

    def base_hash(self) -> str:
        """The base weights and the adapters' names and shapes (not their values: a run's seed sets them)."""
        h = hashlib.sha256()
        for name, p in self._model.named_parameters():
            h.update(f"{name}{tuple(p.shape)}".encode())
            if "lora_" not in name:
                h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:12]

    def fresh(self, seed: int):
        return reset_adapters(self._model, seed)

    def save(self, model, folder) -> None:
        save_adapter(model, Path(folder) / self.weights_file)

    def load(self, folder):
        load_adapter(self._model, Path(folder) / self.weights_file)
        return self._model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):
        with adapters_disabled(self._model):
            return self._model(*args, **kwargs)

    def run_with_cache(self, *args, **kwargs):
        with adapters_disabled(self._model):
            return self._model.run_with_cache(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with adapters_disabled(self._model):
            return self._model.generate(*args, **kwargs)
