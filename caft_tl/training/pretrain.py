"""Pre-training of the organism from scratch, cached by config hash."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from caft_tl.core import files, models
from caft_tl.core.models import response_loss
from caft_tl.organism import make_task
from caft_tl.training import batched


@dataclass
class PretrainConfig:
    """AdamW on fresh documents each step; linear warm-up over ``warmup`` steps, then a constant
    rate, or with ``decay`` > 0 a linear decay to zero over that share of the last steps."""

    steps: int = 1200
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50
    seed: int = 0
    decay: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay <= 1.0:
            raise ValueError(
                f"decay = {self.decay!r}; expected the share of the last steps over which the rate decays, "
                "in [0, 1]"
            )

    def lr_factor(self, step: int) -> float:
        """The learning rate at ``step`` (0-based) over ``lr``."""
        factor = min(1.0, (step + 1) / self.warmup)
        start = self.steps * (1.0 - self.decay)
        return (
            factor
            if self.decay == 0 or step < start
            else factor * max(0.0, (self.steps - step) / (self.steps - start))
        )

    def key(self) -> dict:
        """The cache key's part: the fields, ``decay`` only when set (organisms cached before it keep
        their keys)."""
        out = dataclasses.asdict(self)
        if out["decay"] == 0:
            del out["decay"]
        return out


def pretrain(
    task, model_cfg: models.ModelConfig, cfg: PretrainConfig, progress: bool = True
) -> tuple[HookedTransformer, list[float]]:
    """Train a fresh model on ``task.sample_documents`` (loss on answer tokens)."""
    model = models.build_model(model_cfg, len(task.vocab), seed=cfg.seed)
    if task.seq_len > model_cfg.n_ctx:
        raise ValueError(f"n_ctx {model_cfg.n_ctx} < document length {task.seq_len}")
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cfg.lr_factor)
    losses = []
    model.train()
    for _step in tqdm(range(cfg.steps), desc="pre-train", disable=not progress, leave=False):
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


def pretrain_many(
    task,
    model_cfg: models.ModelConfig,
    cfgs: list[PretrainConfig],
    progress: bool = True,
    device: str | None = None,
) -> list[tuple[HookedTransformer, list[float]]]:
    """:func:`pretrain` for several seeds of one design at once (one stacked computation,
    :mod:`caft_tl.training.batched`): each organism starts from its seed's initialisation, sees its
    seed's document stream and gets its own AdamW state, as pre-training it alone would give
    (equal up to float rounding). The configs may differ only in ``seed``."""
    if not cfgs:
        return []
    if task.seq_len > model_cfg.n_ctx:
        raise ValueError(f"n_ctx {model_cfg.n_ctx} < document length {task.seq_len}")
    first = dataclasses.asdict(cfgs[0])
    for c in cfgs:
        if {**dataclasses.asdict(c), "seed": first["seed"]} != first:
            raise ValueError(f"pretrain_many: the configs may differ only in seed; got {c} and {cfgs[0]}")
    cfg = cfgs[0]
    inits = [models.build_model(model_cfg, len(task.vocab), seed=c.seed, device=device) for c in cfgs]
    why = batched.batchable(inits[0])
    if why is not None:
        return [pretrain(task, model_cfg, c, progress=progress) for c in cfgs]
    stack = batched.Stack(inits[0], [{n: p.detach() for n, p in m.named_parameters()} for m in inits])
    opt = batched.StackedAdamW(stack, [cfg.lr] * len(cfgs), [0.01] * len(cfgs))
    gens = [torch.Generator().manual_seed(c.seed) for c in cfgs]
    dev = inits[0].cfg.device
    losses = torch.zeros(len(cfgs), cfg.steps)
    for step in tqdm(range(cfg.steps), desc=f"pre-train ×{len(cfgs)}", disable=not progress, leave=False):
        docs = [task.sample_documents(cfg.batch_size, g) for g in gens]
        tokens = torch.stack([d.tokens for d in docs]).to(dev)
        target = torch.stack([d.target_mask for d in docs]).to(dev)
        loss = batched.stacked_loss(
            batched.stacked_forward(inits[0].cfg, stack.params, tokens), tokens, target
        )
        stack.grad.zero_()
        batched._backward(loss.sum())
        opt.step(len(cfgs), lr_factor=cfg.lr_factor(step))  # the LambdaLR schedule of pretrain
        losses[:, step] = loss.detach().cpu()
    out = []
    for r, model in enumerate(inits):
        model.load_state_dict(stack.state(r), strict=False)
        model.eval()
        out.append((model, losses[r].tolist()))
    return out


def model_config(task, overrides: dict | None = None) -> models.ModelConfig:
    """The organism's architecture for ``task``: the default :class:`~caft_tl.core.models.ModelConfig`
    with the task's document length as context, and ``overrides`` (its fields) on top."""
    fields = {f.name for f in dataclasses.fields(models.ModelConfig)}
    if unknown := sorted(set(overrides or {}) - fields):
        raise ValueError(f"unknown model parameter(s) {unknown}; valid: {', '.join(sorted(fields))}")
    return models.ModelConfig(**{"n_ctx": max(models.ModelConfig.n_ctx, task.seq_len), **(overrides or {})})


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
    model_cfg = model_cfg or model_config(task)
    cfg = cfg or PretrainConfig()
    spec = {
        "task": task_name,
        "task_cfg": task.cfg,
        "model": model_cfg,
        "pretrain": cfg.key(),
        "platform": platform(),
    }
    cache = files.cache_folder("organisms", cache_dir)
    folder = cache / f"{task_name}-{files.config_hash(spec)}"
    if (folder / "model.safetensors").exists() and (folder / "config.json").exists():
        model, _ = models.load_model(folder)
        return model, task, folder
    model, losses = pretrain(task, model_cfg, cfg, progress=progress)
    meta = {"spec": spec, "final_loss": sum(losses[-50:]) / 50, "losses": losses}
    with files.writing_to_cache(cache):
        models.save_model(model, folder, model_cfg, meta=meta)
    return model, task, folder


def export_organism(
    run_dir: str | os.PathLike, model: HookedTransformer, checkpoint: str | os.PathLike
) -> Path:
    """Copy a cached organism checkpoint into ``run_dir/organism`` so the run is self-contained."""
    dest = Path(run_dir) / "organism"
    (Path(run_dir) / "real_model.json").unlink(missing_ok=True)  # a real model studied here before
    meta = files.read_json(Path(checkpoint) / "config.json")
    models.save_model(model, dest, models.ModelConfig(**meta["model"]), meta["meta"])
    return dest


def load_or_pretrain_many(
    task_name: str,
    task_cfg=None,
    model_cfg: models.ModelConfig | None = None,
    cfgs: list[PretrainConfig] | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[tuple[HookedTransformer, object, Path]]:
    """:func:`load_or_pretrain` for several pre-training seeds of one design: the cached ones load,
    the others pre-train together (:func:`pretrain_many`). Pre-training is chaotic, so the stacked
    path makes other organisms than one at a time (equal up to float rounding, then diverging): its
    cache key marks ``batched`` in the platform, and the two never hand back each other's organism."""
    task = make_task(task_name, task_cfg)
    model_cfg = model_cfg or model_config(task)
    cfgs = cfgs or [PretrainConfig()]
    folders = []
    cache = files.cache_folder("organisms", cache_dir)
    for cfg in cfgs:
        spec = {
            "task": task_name,
            "task_cfg": task.cfg,
            "model": model_cfg,
            "pretrain": cfg.key(),
            "platform": {**platform(), "batched": True},
        }
        folders.append((cache / f"{task_name}-{files.config_hash(spec)}", spec))
    missing = [
        i
        for i, (f, _) in enumerate(folders)
        if not ((f / "model.safetensors").exists() and (f / "config.json").exists())
    ]
    for i, (model, losses) in zip(
        missing, pretrain_many(task, model_cfg, [cfgs[i] for i in missing], progress=progress)
    ):
        folder, spec = folders[i]
        meta = {"spec": spec, "final_loss": sum(losses[-50:]) / 50, "losses": losses}
        with files.writing_to_cache(cache):
            models.save_model(model, folder, model_cfg, meta=meta)
    return [(models.load_model(f)[0], task, f) for f, _ in folders]
