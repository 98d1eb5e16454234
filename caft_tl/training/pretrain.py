"""Pre-training of the organism from scratch, cached by config hash."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from caft_tl.core import files, models
from caft_tl.core.models import response_loss
from caft_tl.organism import make_task


@dataclass
class PretrainConfig:
    steps: int = 1200
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50
    seed: int = 0


def pretrain(task, model_cfg: models.ModelConfig, cfg: PretrainConfig, progress: bool = True) -> tuple[HookedTransformer, list[float]]:
    """Train a fresh model on ``task.sample_documents`` (loss on answer tokens)."""
    model = models.build_model(model_cfg, len(task.vocab), seed=cfg.seed)
    if task.seq_len > model_cfg.n_ctx:
        raise ValueError(f"n_ctx {model_cfg.n_ctx} < document length {task.seq_len}")
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup))
    losses = []
    model.train()
    for step in tqdm(range(cfg.steps), desc="pre-train", disable=not progress, leave=False):
        batch = task.sample_documents(cfg.batch_size, gen)
        batch.tokens = batch.tokens.to(model.cfg.device)
        loss = response_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return model, losses


def platform() -> dict:
    """What, besides the design, decides which organism pre-training makes: torch version, device, threads."""
    return {"torch": torch.__version__, "device": models.default_device(), "threads": torch.get_num_threads()}


def load_or_pretrain(
    task_name: str,
    task_cfg=None,
    model_cfg: models.ModelConfig | None = None,
    cfg: PretrainConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[HookedTransformer, object, Path]:
    """Return (model, task, checkpoint folder), training only if the cache has no such organism.
    The default model has the default context, or the task's document length where longer.

    The cache key holds everything that makes a different organism: the design (task, its config,
    model, pre-training budget and seed) and the platform (:func:`platform`), since pre-training is
    chaotic and float reduction order differs between torch versions, devices and thread counts —
    a cache never hands back another machine's organism."""
    task = make_task(task_name, task_cfg)
    model_cfg = model_cfg or models.ModelConfig(n_ctx=max(models.ModelConfig.n_ctx, task.seq_len))
    cfg = cfg or PretrainConfig()
    spec = {"task": task_name, "task_cfg": task.cfg, "model": model_cfg, "pretrain": cfg, "platform": platform()}
    folder = Path(cache_dir or files.cache_dir()) / "organisms" / f"{task_name}-{files.config_hash(spec)}"
    if (folder / "model.safetensors").exists() and (folder / "config.json").exists():
        model, _ = models.load_model(folder)
        return model, task, folder
    model, losses = pretrain(task, model_cfg, cfg, progress=progress)
    models.save_model(model, folder, model_cfg, meta={"spec": spec, "final_loss": sum(losses[-50:]) / 50, "losses": losses})
    return model, task, folder


def export_organism(run_dir: str | os.PathLike, model: HookedTransformer, checkpoint: str | os.PathLike) -> Path:
    """Copy a cached organism checkpoint into ``run_dir/organism`` so the run is self-contained."""
    dest = Path(run_dir) / "organism"
    meta = files.read_json(Path(checkpoint) / "config.json")
    models.save_model(model, dest, models.ModelConfig(**meta["model"]), meta["meta"])
    return dest
