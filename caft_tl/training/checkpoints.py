"""Training checkpoints: model, optimiser, RNG states and progress in one safetensors file,
written atomically, so an interrupted run resumes exactly where its last checkpoint left it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import safe_open, save_file

from caft_tl.core import files
from caft_tl.core.models import parameter_state


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: dict,
    rng: dict[str, torch.Tensor],
) -> None:
    """One file: ``model.*`` weights, ``optim.<param>.<name>`` state, ``rng.*`` generator states,
    with the optimiser's hyper-parameters and ``progress`` (step, losses, ...) as JSON metadata."""
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in parameter_state(model).items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for name, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"optimizer state {name!r} is {type(value).__name__}; only tensors are checkpointed"
                )
            tensors[f"optim.{idx}.{name}"] = value.detach().contiguous().cpu()
    tensors.update({f"rng.{k}": v.contiguous() for k, v in rng.items()})
    meta = {"progress": json.dumps(progress), "param_groups": json.dumps(opt["param_groups"])}
    with files.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_checkpoint(
    path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore model and optimiser in place; returns (progress, rng states)."""
    path = Path(path)
    tensors = files.read_tensors(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "progress" not in meta:
        raise files.CorruptFileError(
            f"checkpoint {str(path)!r} has no training progress metadata; delete it to restart the run"
        )
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(model_state, strict=False)
    missing = [k for k in missing if k in parameter_state(model)]
    if missing or unexpected:
        raise files.CorruptFileError(
            f"checkpoint {str(path)!r} does not match the model: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}"
        )
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    rng = {k[len("rng.") :]: v for k, v in tensors.items() if k.startswith("rng.")}
    return json.loads(meta["progress"]), rng
