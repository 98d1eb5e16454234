"""Fine-tuning runs as cached units, and their results rows."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from transformer_lens import HookedTransformer

from caft_tl import models, runs
from caft_tl.evaluate import evaluate_task
from caft_tl.interventions import Intervention
from caft_tl.training import FinetuneConfig, finetune


def result_rows(task: str, method: str, directions: str, param: str, seed: int, metrics: dict[str, dict[str, float]]) -> list[dict]:
    """Rows of the results table from ``{split: {metric: value}}``."""
    return [
        {"task": task, "method": method, "directions": directions, "param": param, "seed": seed,
         "split": split, "metric": metric, "value": value}
        for split, ms in metrics.items() for metric, value in ms.items()
    ]


def intervention_hash(iv: Intervention | None) -> str:
    if iv is None:
        return "none"
    h = hashlib.sha256()
    h.update(f"{iv.mode}|{iv.positions}|{iv.scale}|{iv.on_at_eval}".encode())
    for s in iv.subspaces:
        h.update(s.hook_name.encode())
        h.update(s.basis.float().contiguous().numpy().tobytes())
        if s.reference_mean is not None:
            h.update(s.reference_mean.float().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def run_folder(run_dir: str | os.PathLike, method: str = "plain", directions: str = "none", param: str = "", seed: int = 0) -> Path:
    """Where :func:`run_finetune` keeps a run: ``run_dir/finetunes/<method>[-<directions>][-<param>]-seed<seed>``."""
    key = "-".join(x for x in (method, directions if directions != "none" else "", param.replace("=", ""), f"seed{seed}") if x)
    return Path(run_dir) / "finetunes" / key


def run_finetune(
    run_dir: str | os.PathLike,
    base: HookedTransformer,
    task,
    cfg: FinetuneConfig,
    method: str = "plain",
    directions: str = "none",
    param: str = "",
    intervention: Intervention | None = None,
    keep_model: bool = False,
    progress: bool = True,
) -> tuple[list[dict], HookedTransformer | None]:
    """Fine-tune a copy of ``base`` (optionally under ``intervention``), evaluate it without the
    intervention (unless ``on_at_eval``) and return its results rows.

    A finished run (same config and intervention) is read back from
    ``run_dir/finetunes/<method>-<directions>-<param>-seed<seed>/`` instead of re-trained.
    ``keep_model`` saves (or reloads) the fine-tuned weights too.
    """
    if intervention is not None:
        intervention.check(base)
    folder = run_folder(run_dir, method, directions, param, cfg.seed)
    spec = {"cfg": dataclasses.asdict(cfg), "intervention": intervention_hash(intervention), "task": task.name,
            "base": models.weights_hash(base)}
    spec_hash = runs.config_hash(spec)
    done = folder / "metrics.json"
    if done.exists() and runs.read_json(done).get("config_hash") == spec_hash and (not keep_model or (folder / "model.safetensors").exists()):
        blob = runs.read_json(done)
        model = models.load_model(folder)[0] if keep_model else None
        return blob["rows"], model

    model = models.copy_model(base)
    data = task.finetune_dataset(cfg.n_examples, seed=cfg.seed)
    checkpoint = folder / f"checkpoint-{spec_hash}.safetensors"  # an interrupted run resumes from here
    losses = finetune(model, data, cfg, intervention, progress=progress, desc=folder.name, checkpoint=checkpoint)
    eval_hooks = intervention.eval_hooks() if intervention is not None else []
    metrics = evaluate_task(model, task, fwd_hooks=eval_hooks)
    rows = result_rows(task.name, method, directions, param, cfg.seed, metrics)
    if keep_model:
        models.save_model(model, folder, models.ModelConfig(**{f.name: getattr(model.cfg, f.name) for f in dataclasses.fields(models.ModelConfig)}))
    runs.write_json(folder / "run.json", spec)
    runs.write_json(done, {"config_hash": spec_hash, "rows": rows, "losses": losses})
    checkpoint.unlink(missing_ok=True)
    return rows, model
