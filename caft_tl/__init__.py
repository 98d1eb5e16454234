"""caft-tl: Concept Ablation Fine-Tuning and train-time steering on TransformerLens hook points.

The public API: the pieces a researcher applies to their own ``HookedTransformer`` (or a Hugging Face
model through ``TransformerBridge``). ``import caft_tl`` is light: each name is imported on first use.

Example:
    import caft_tl as ct

    iv = ct.Intervention("zero", [subspace])  # a Subspace: an orthonormal basis at one hook point
    ct.finetune(model, data, ct.FinetuneConfig(), intervention=iv)  # CAFT: train with it ablated
    with iv.apply(model):  # or evaluate with it on
        logits = model(tokens)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> (module, attribute): the one place a public name is defined
_PUBLIC: dict[str, tuple[str, str]] = {
    # subspaces: an orthonormal basis [d_model, k] at one hook point, with its reference mean
    "Subspace": ("caft_tl.core.subspace", "Subspace"),
    "orthonormalize": ("caft_tl.core.subspace", "orthonormalize"),
    "diff_of_means": ("caft_tl.core.subspace", "diff_of_means"),
    "random_subspace": ("caft_tl.core.subspace", "random_subspace"),
    "save_subspaces": ("caft_tl.core.subspace", "save_subspaces"),
    "load_subspaces": ("caft_tl.core.subspace", "load_subspaces"),
    # interventions and the mode registry
    "Intervention": ("caft_tl.interventions.intervention", "Intervention"),
    "ModeSpec": ("caft_tl.interventions.modes", "ModeSpec"),
    "MODES": ("caft_tl.interventions.modes", "MODES"),
    "register_mode": ("caft_tl.interventions.modes", "register_mode"),
    "get_mode": ("caft_tl.interventions.modes", "get_mode"),
    # data and models
    "TokenDataset": ("caft_tl.core.data", "TokenDataset"),
    "load_model": ("caft_tl.real.loading", "load"),
    "load_tokenizer": ("caft_tl.real.hf_models", "load_tokenizer"),
    "copy_model": ("caft_tl.core.models", "copy_model"),
    "check_hook_names": ("caft_tl.core.models", "check_hook_names"),
    "response_loss": ("caft_tl.core.models", "response_loss"),
    # chat / multiple-choice JSONL → TokenDataset
    "read_jsonl": ("caft_tl.real.chat_data", "read_jsonl"),
    "chat_dataset": ("caft_tl.real.chat_data", "chat_dataset"),
    "load_chat_jsonl": ("caft_tl.real.chat_data", "load_chat_jsonl"),
    "load_mc_jsonl": ("caft_tl.real.chat_data", "load_mc_jsonl"),
    "mc_dataset": ("caft_tl.real.chat_data", "mc_dataset"),
    # a real task as data: a card (YAML / JSON) beside its JSONL files
    "TaskCard": ("caft_tl.real.card", "TaskCard"),
    "load_card": ("caft_tl.real.card", "load_card"),
    # streamed diffing and PCA
    "MomentStats": ("caft_tl.diffing.diffs", "MomentStats"),
    "collect_diff_stats": ("caft_tl.diffing.diffs", "collect_diff_stats"),
    "mean_activations": ("caft_tl.diffing.diffs", "mean_activations"),
    "pca": ("caft_tl.directions.pca", "pca"),
    # direction sets by name (pca, topk_pca, random, sae, persona_vector, oracle, ...)
    "SetInputs": ("caft_tl.directions.registry", "SetInputs"),
    "build_direction_sets": ("caft_tl.directions.registry", "build"),
    "register_direction_set": ("caft_tl.directions.registry", "register_set"),
    # offline models made from package-registry wheels (smollm2-135m, qwen2.5-coder-0.5b)
    "OFFLINE_MODELS": ("caft_tl.real.offline_models", "OFFLINE_MODELS"),
    # fine-tuning: plain, under an intervention, LoRA
    "FinetuneConfig": ("caft_tl.training.loop", "FinetuneConfig"),
    "finetune": ("caft_tl.training.loop", "finetune"),
    "LoraSettings": ("caft_tl.real.lora", "LoraSettings"),
    "add_lora": ("caft_tl.real.lora", "add_lora"),
    # checks on the untrained base model
    "mode_grid": ("caft_tl.interventions.checks", "mode_grid"),
    "mean_projection": ("caft_tl.interventions.checks", "mean_projection"),
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    """Import a public name on first use (``import caft_tl`` itself imports neither torch nor TL)."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'caft_tl' has no attribute {name!r}; public: {', '.join(_PUBLIC)}")
    module, attr = _PUBLIC[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # the next access skips __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
