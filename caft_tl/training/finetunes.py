"""Fine-tuning runs as cached units in the run directory, fanned out over the cores, and their results rows."""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from caft_tl.core import files, models, results
from caft_tl.core.run_dir import RunDir
from caft_tl.interventions.intervention import Intervention
from caft_tl.organism.judge import evaluate_task
from caft_tl.training.loop import FinetuneConfig, finetune


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


def run_finetune(
    run_dir: str | os.PathLike | RunDir,
    base: HookedTransformer,
    task,
    cfg: FinetuneConfig,
    method: str = "plain",
    directions: str = "none",
    param: str = "",
    intervention: Intervention | None = None,
    keep_model: bool = False,
    progress: bool = True,
    organism: str | None = None,
) -> tuple[list[dict], HookedTransformer | None]:
    """Fine-tune a copy of ``base`` (optionally under ``intervention``), evaluate it without the
    intervention (unless ``on_at_eval``) and return its results rows (``organism``: the rows'
    organism id, by default the run directory's).

    A finished run (same config and intervention) is read back from
    ``run_dir/finetunes/<method>-<directions>-<param>-seed<seed>/`` instead of re-trained.
    ``keep_model`` saves (or reloads) the fine-tuned weights too.
    """
    if intervention is not None:
        intervention.check(base)
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    key = results.RowKey(task.name, organism or run.organism_id, method, directions, param, trained=True, seed=cfg.seed)
    folder = run.finetune(method, directions, param, cfg.seed)
    spec = {"cfg": dataclasses.asdict(cfg), "intervention": intervention_hash(intervention), "task": task.name,
            "base": models.weights_hash(base)}
    spec_hash = files.config_hash(spec)
    done = folder / "metrics.json"
    if done.exists() and (blob := files.read_json(done)).get("config_hash") == spec_hash and "values" in blob \
            and (not keep_model or (folder / "model.safetensors").exists()):
        model = models.load_model(folder)[0] if keep_model else None
        metrics: dict[str, dict[str, float]] = {}
        for split, metric, value in blob["values"]:  # a list, so the rows come back in their original order
            metrics.setdefault(split, {})[metric] = value
        return results.rows(key, metrics), model

    model = models.copy_model(base)
    data = task.finetune_dataset(cfg.n_examples, seed=cfg.seed)
    checkpoint = folder / f"checkpoint-{spec_hash}.safetensors"  # an interrupted run resumes from here
    losses = finetune(model, data, cfg, intervention, progress=progress, desc=folder.name, checkpoint=checkpoint)
    eval_hooks = intervention.eval_hooks() if intervention is not None else []
    metrics = evaluate_task(model, task, fwd_hooks=eval_hooks)
    if keep_model:
        models.save_model(model, folder, models.ModelConfig(**{f.name: getattr(model.cfg, f.name) for f in dataclasses.fields(models.ModelConfig)}))
    files.write_json(folder / "run.json", spec)
    values = [[split, metric, value] for split, ms in metrics.items() for metric, value in ms.items()]
    files.write_json(done, {"config_hash": spec_hash, "values": values, "losses": losses})
    checkpoint.unlink(missing_ok=True)
    return results.rows(key, metrics), model


@dataclasses.dataclass
class FinetuneJob:
    """One :func:`run_finetune` call, as data (what :func:`run_finetunes` fans out)."""

    cfg: FinetuneConfig
    method: str = "plain"
    directions: str = "none"
    param: str = ""
    intervention: Intervention | None = None
    keep_model: bool = False  # save the fine-tuned weights too


def default_workers() -> int:
    """Worker processes for CPU fine-tuning: one per available core (each runs torch on 1 thread)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_SHARED: dict = {}  # what forked workers inherit instead of unpickling: run_dir, base, task, organism


def _run_job(job: FinetuneJob) -> list[dict]:
    torch.set_num_threads(1)
    s = _SHARED
    return _run(s["run_dir"], s["base"], s["task"], job, s["organism"])


def _run(run_dir, base, task, job: FinetuneJob, organism: str | None) -> list[dict]:
    return run_finetune(run_dir, base, task, job.cfg, job.method, job.directions, job.param, job.intervention,
                        keep_model=job.keep_model, progress=False, organism=organism)[0]


def run_finetunes(
    run_dir: str | os.PathLike | RunDir, base: HookedTransformer, task, jobs: list[FinetuneJob],
    workers: int | None = None, progress: bool = True, desc: str = "fine-tunes", organism: str | None = None,
) -> list[dict]:
    """:func:`run_finetune` for every job, in ``workers`` processes on CPU; the rows in job order.

    Each worker is forked (it shares the base model and task without copying them) and trains on
    one torch thread, so on a machine with n free cores n runs go at once. Runs are independent,
    seeded and cached by hash, so the rows are the same as a one-process loop's; ``workers=1``, or
    a model not on the CPU, runs them in this process.
    """
    for job in jobs:
        if job.intervention is not None:
            job.intervention.check(base)
    workers = min(workers or default_workers(), len(jobs))
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress)
    if workers <= 1 or str(base.cfg.device) != "cpu":
        rows = []
        for job in jobs:
            rows.append(_run(run_dir, base, task, job, organism))
            bar.update()
        bar.close()
        return [r for rs in rows for r in rs]
    _SHARED.update(run_dir=run_dir, base=base, task=task, organism=organism)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            rows = []
            for r in pool.imap(_run_job, jobs):
                rows.append(r)
                bar.update()
    finally:
        _SHARED.clear()
        bar.close()
    return [r for rs in rows for r in rs]
