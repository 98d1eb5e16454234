"""Fine-tuning runs as cached units in the run directory, fanned out over the cores, and their results
rows."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import multiprocessing
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from caft_tl.core import files, results
from caft_tl.core.data import TokenDataset
from caft_tl.core.run_dir import RunDir
from caft_tl.core.world import HasDisambiguating, HasDocuments, World, require
from caft_tl.interventions.intervention import Intervention
from caft_tl.training import batched
from caft_tl.training.loop import FinetuneConfig, finetune
from caft_tl.training.monitor import Monitor, MonitorLog
from caft_tl.training.trainable import Trainable, as_trainable

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


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


#: seed of the generic documents the KL-to-base baseline reads (offset by the fine-tuning seed)
KL_DOCUMENT_SEED = 20_000


def kl_inputs(base: HookedTransformer, task: World, cfg: FinetuneConfig) -> dict:
    """``finetune``'s ``reference`` (the base model) and ``reference_data`` (``cfg.n_examples`` of the task's
    generic pre-training documents, no labels) for the KL-to-base baseline; empty without it."""
    if not cfg.kl_to_base:
        return {}
    require(task, HasDocuments, "the KL-to-base baseline (FinetuneConfig.kl_to_base)")
    gen = torch.Generator().manual_seed(KL_DOCUMENT_SEED + cfg.seed)
    docs = task.sample_documents(task_examples(task, cfg), gen)
    return {"reference": base, "reference_data": docs}


def task_examples(task, cfg: FinetuneConfig) -> int:
    """How many of the task's examples a run draws: ``cfg.n_examples``, or the task's default when None."""
    n = cfg.n_examples if cfg.n_examples is not None else task.defaults.get("n_examples")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(
            f"FinetuneConfig.n_examples = {cfg.n_examples!r} and task {task.name!r} has no "
            f"default n_examples; give a positive int"
        )
    return n


def finetune_data(task, cfg: FinetuneConfig, data: TokenDataset | None = None) -> TokenDataset:
    """The examples a run trains on: ``data`` when given (a job's own examples), else ``cfg.n_examples`` of
    the task's fine-tuning data, of which the last ``cfg.n_disambiguating`` are its disambiguating
    examples (the data-side reference; the loop shuffles)."""
    if data is not None:
        return data
    m, n = cfg.n_disambiguating, task_examples(task, cfg)
    if not (isinstance(m, int) and 0 <= m < n):
        raise ValueError(f"FinetuneConfig.n_disambiguating = {m!r}; expected an int in [0, n_examples={n})")
    if m:
        require(task, HasDisambiguating, "the data-side reference (FinetuneConfig.n_disambiguating)")
    data = task.finetune_dataset(n - m, seed=cfg.seed)
    return TokenDataset.cat([data, task.disambiguating_examples(m, seed=cfg.seed)]) if m else data


def run_finetune(
    run_dir: str | os.PathLike | RunDir,
    base: HookedTransformer | Trainable,
    task: World,
    cfg: FinetuneConfig,
    method: str = "plain",
    directions: str = "none",
    param: str = "",
    intervention: Intervention | None = None,
    keep_model: bool = False,
    progress: bool = True,
    organism: str | None = None,
    data: TokenDataset | None = None,
    monitor: Monitor | None = None,
) -> tuple[list[dict], torch.nn.Module | None]:
    """Fine-tune a fresh model from ``base`` (a :class:`~caft_tl.training.trainable.Trainable`, or
    a model fine-tuned whole), optionally under ``intervention``, evaluate it without the
    intervention (unless ``on_at_eval``) and return its results rows (``organism``: the rows'
    organism id, by default the run directory's).

    A finished run (same config and intervention) is read back from
    ``run_dir/finetunes/<method>-<directions>-<param>-seed<seed>/`` instead of re-trained.
    ``keep_model`` saves (or reloads) the fine-tuned weights too; ``data`` trains on those examples
    instead of the task's (every row of them; ``cfg.n_examples`` is then not used). ``monitor``
    records its readings during training into the run's ``metrics.json`` (key ``monitor``). A LoRA
    base returns its one adapted model, which the next run re-initialises.
    """
    trainable = as_trainable(base)
    if intervention is not None:
        intervention.check(trainable.model)
    if monitor is not None:
        monitor.check(trainable.model)
    unit = _Unit.make(
        run_dir,
        trainable,
        task,
        FinetuneJob(cfg, method, directions, param, intervention, keep_model, data, monitor),
        organism,
    )
    if (metrics := unit.cached()) is not None:
        model = trainable.load(unit.folder) if keep_model else None
        return results.rows(unit.key, metrics), model

    model = trainable.fresh(cfg.seed)
    data = finetune_data(task, cfg, unit.job.data)
    checkpoint = (
        unit.folder / f"checkpoint-{unit.spec_hash}.safetensors"
    )  # an interrupted run resumes from here
    every_row = dataclasses.replace(cfg, n_examples=len(data))
    log = MonitorLog(monitor) if monitor is not None else None
    losses = finetune(
        model,
        data,
        every_row,
        intervention,
        progress=progress,
        desc=unit.folder.name,
        checkpoint=checkpoint,
        monitor=log,
        **kl_inputs(trainable.model, task, cfg),
    )
    metrics = unit.finish(model, task, losses, trainable, log)
    checkpoint.unlink(missing_ok=True)
    return results.rows(unit.key, metrics), model


@dataclasses.dataclass
class _Unit:
    """One fine-tuning run's place in the run directory: its rows' key, folder and config hash."""

    job: FinetuneJob
    weights_file: str  # the kept model's file (Trainable.weights_file)
    key: results.RowKey
    folder: Path
    spec: dict
    spec_hash: str
    n_examples: int  # the rows it trains on

    @classmethod
    def make(
        cls,
        run_dir,
        base: HookedTransformer | Trainable,
        task: World,
        job: FinetuneJob,
        organism: str | None,
        base_hash: str | None = None,
    ) -> _Unit:
        trainable = as_trainable(base)
        run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        cfg = job.cfg
        key = results.RowKey(
            task.name,
            organism or run.organism_id,
            job.method,
            job.directions,
            job.param,
            trained=True,
            seed=cfg.seed,
        )
        folder = run.finetune(job.method, job.directions, job.param, cfg.seed)
        spec = {
            "cfg": dataclasses.asdict(cfg),
            "intervention": intervention_hash(job.intervention),
            "task": task.name,
            "base": base_hash or trainable.base_hash(),
        }
        if job.data is not None:  # a job's own examples: their tokens and masks decide the run too
            spec["data"] = hashlib.sha256(
                job.data.tokens.numpy().tobytes() + job.data.response_mask.numpy().tobytes()
            ).hexdigest()[:16]
        if job.monitor is not None:  # only then: an unmonitored run's config (and cache) is unchanged
            spec["monitor"] = job.monitor.fingerprint()
        n = len(job.data) if job.data is not None else task_examples(task, cfg)
        return cls(job, trainable.weights_file, key, folder, spec, files.config_hash(spec), n)

    def cached(self) -> dict[str, dict[str, float]] | None:
        """The metrics of a finished run with this config (and saved weights if it keeps them), else None."""
        done = self.folder / "metrics.json"
        if not (
            done.exists()
            and (blob := files.read_json(done)).get("config_hash") == self.spec_hash
            and "values" in blob
            and (not self.job.keep_model or (self.folder / self.weights_file).exists())
        ):
            return None
        metrics: dict[str, dict[str, float]] = {}
        for split, metric, value in blob["values"]:  # a list, so the rows come back in their original order
            metrics.setdefault(split, {})[metric] = value
        return metrics

    def finish(
        self,
        model: torch.nn.Module,
        task: World,
        losses: list[float],
        trainable: Trainable,
        monitor: MonitorLog | None = None,
    ) -> dict[str, dict[str, float]]:
        """Evaluate the fine-tuned ``model`` and write the run's files (a kept model's by
        ``trainable``, the ``monitor``'s readings when given); returns its metrics."""
        iv = self.job.intervention
        metrics = task.evaluate(model, fwd_hooks=iv.eval_hooks() if iv is not None else [])
        if self.job.keep_model:
            trainable.save(model, self.folder)
        files.write_json(self.folder / "run.json", self.spec)
        values = [[split, metric, value] for split, ms in metrics.items() for metric, value in ms.items()]
        record = {"config_hash": self.spec_hash, "values": values, "losses": losses}
        if monitor is not None:
            record["monitor"] = monitor.series()
        files.write_json(self.folder / "metrics.json", record)
        return metrics

    @property
    def n_steps(self) -> int:
        return self.job.cfg.epochs * math.ceil(self.n_examples / self.job.cfg.batch_size)


@dataclasses.dataclass
class FinetuneJob:
    """One :func:`run_finetune` call, as data (what :func:`run_finetunes` fans out)."""

    cfg: FinetuneConfig
    method: str = "plain"
    directions: str = "none"
    param: str = ""
    intervention: Intervention | None = None
    keep_model: bool = False  # save the fine-tuned weights too
    data: TokenDataset | None = (
        None  # train on these examples instead of the task's (e.g. a filtered subset); one epoch
    )
    monitor: Monitor | None = None  # the training-time readings to log (None: none, files unchanged)


def monitor_record(run_dir: str | os.PathLike | RunDir, job: FinetuneJob) -> dict:
    """The readings a finished monitored ``job`` wrote (its ``metrics.json``'s ``monitor``).

    Args:
        run_dir: the run directory the job ran in.
        job: the job, with its ``monitor``.

    Returns:
        ``{"every", "steps", "subspaces": {hook: {"written": [..], "other_hooks": {hook': [..]}}}}``.

    Example:
        record = monitor_record(run_dir, job)
        record["subspaces"]["blocks.0.hook_resid_post"]["written"]  # ‖P x‖ at steps record["steps"]
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    path = run.finetune(job.method, job.directions, job.param, job.cfg.seed) / "metrics.json"
    blob = files.read_json(path)
    if "monitor" not in blob:
        raise ValueError(
            f"{str(path)!r} has no monitor readings; run the job with a monitor (FinetuneJob.monitor)"
        )
    return blob["monitor"]


def default_workers() -> int:
    """Worker processes for CPU fine-tuning: one per available core (each runs torch on 1 thread)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_SHARED: dict = {}  # what forked workers inherit instead of unpickling: run_dir, base, task, organism


def _run_job(job: FinetuneJob) -> list[dict]:
    torch.set_num_threads(1)
    s = _SHARED
    return _run(s["run_dir"], s["base"], s["task"], job, s["organism"])


def _run(run_dir, base, task, job: FinetuneJob, organism: str | None) -> list[dict]:
    return run_finetune(
        run_dir,
        base,
        task,
        job.cfg,
        job.method,
        job.directions,
        job.param,
        job.intervention,
        keep_model=job.keep_model,
        progress=False,
        organism=organism,
        data=job.data,
        monitor=job.monitor,
    )[0]


def run_finetunes(
    run_dir: str | os.PathLike | RunDir,
    base: HookedTransformer | Trainable,
    task: World,
    jobs: list[FinetuneJob],
    workers: int | None = None,
    progress: bool = True,
    desc: str = "fine-tunes",
    organism: str | None = None,
    batch: bool | None = None,
    group_size: int = 64,
) -> list[dict]:
    """:func:`run_finetune` for every job; the rows in job order, the same as a one-process loop's.

    By default (``batch`` None) an organism (a HookedTransformer that
    :func:`caft_tl.training.batched.batchable` accepts) trains its unfinished jobs in groups of at most
    ``group_size`` as one stacked computation
    (:func:`caft_tl.training.batched.finetune_batched`), at least one group per worker; each member is
    cached in its own run folder exactly as :func:`run_finetune` caches it, and a group checkpoints
    itself (``finetunes/group-<hash>.safetensors``) so an interrupted group resumes. Other models
    (real ones, ``batch=False``) run one job at a time. On CPU, ``workers`` forked processes (one per
    available core by default) each take groups (or jobs) and train on one torch thread.
    """
    trainable = as_trainable(base)
    base = trainable.model
    for job in jobs:
        if job.intervention is not None:
            job.intervention.check(base)
        if job.monitor is not None:
            job.monitor.check(base)
        n = task_examples(task, job.cfg)
        if not (isinstance(job.cfg.n_disambiguating, int) and 0 <= job.cfg.n_disambiguating < n):
            raise ValueError(
                f"FinetuneConfig.n_disambiguating = {job.cfg.n_disambiguating!r} ({job.method}); "
                f"expected an int in [0, n_examples={n})"
            )
    if batch is None:
        batch = batched.batchable(base) is None
    if not batch:
        return _one_at_a_time(run_dir, trainable, task, jobs, workers, progress, desc, organism)
    base_hash = trainable.base_hash()
    units = [_Unit.make(run_dir, trainable, task, job, organism, base_hash) for job in jobs]
    rows: list[list[dict] | None] = [None] * len(jobs)
    hooks = set(batched.hook_names(base.cfg.n_layers))
    pending, alone = [], []
    for i, u in enumerate(units):
        if (metrics := u.cached()) is not None:
            rows[i] = results.rows(u.key, metrics)
        elif (
            set(u.job.intervention.hook_names if u.job.intervention is not None else [])
            | set(u.job.monitor.hook_names if u.job.monitor is not None else [])
            <= hooks
        ):
            pending.append(i)
        else:
            alone.append(i)  # a hook the stacked forward does not offer
    workers = max(1, min(workers or default_workers(), len(pending))) if str(base.cfg.device) == "cpu" else 1
    groups = []
    for kind in (
        False,
        True,
    ):  # runs with a KL-to-base term group apart: only they pay its two extra forward passes
        part = [i for i in pending if bool(units[i].job.cfg.kl_to_base) == kind]
        share = max(1, round(workers * len(part) / len(pending))) if part else 0
        n_groups = max(share, math.ceil(len(part) / group_size)) if part else 0
        by_steps = sorted(part, key=lambda i: -units[i].n_steps)  # round-robin: groups of similar work
        groups += [sorted(by_steps[g::n_groups]) for g in range(n_groups) if by_steps[g::n_groups]]
    bar = tqdm(
        total=len(jobs), initial=len(jobs) - len(pending) - len(alone), desc=desc, disable=not progress
    )
    todo = [("group", [units[i] for i in g]) for g in groups] + [("one", [units[i]]) for i in alone]
    index = [g for g in groups] + [[i] for i in alone]
    _SHARED.update(base=trainable, task=task)
    try:
        if workers <= 1 or len(todo) <= 1:
            done = []
            for t in todo:
                done.append(_run_todo(t))
                bar.update(len(t[1]))
        else:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                done = []
                for t, r in zip(todo, pool.imap(_run_todo, todo)):
                    done.append(r)
                    bar.update(len(t[1]))
    finally:
        _SHARED.clear()
        bar.close()
    for idx, rs in zip(index, done):
        for i, r in zip(idx, rs):
            rows[i] = r
    return [r for rs in rows for r in rs]


def _run_todo(todo) -> list[list[dict]]:
    """Rows of each unit of a ``("group", units)`` or ``("one", [unit])`` item (in a worker or not)."""
    kind, units = todo
    trainable, task = _SHARED["base"], _SHARED["task"]
    base = trainable.model
    if multiprocessing.parent_process() is not None:
        torch.set_num_threads(1)
    if kind == "one":
        u = units[0]
        model = trainable.fresh(u.job.cfg.seed)
        data = finetune_data(task, u.job.cfg, u.job.data)
        checkpoint = u.folder / f"checkpoint-{u.spec_hash}.safetensors"
        every_row = dataclasses.replace(u.job.cfg, n_examples=len(data))
        log = MonitorLog(u.job.monitor) if u.job.monitor is not None else None
        losses = finetune(
            model,
            data,
            every_row,
            u.job.intervention,
            progress=False,
            desc=u.folder.name,
            checkpoint=checkpoint,
            monitor=log,
            **kl_inputs(base, task, u.job.cfg),
        )
        metrics = u.finish(model, task, losses, trainable, log)
        checkpoint.unlink(missing_ok=True)
        return [results.rows(u.key, metrics)]
    return _run_group(trainable, task, units)


def _run_group(trainable: Trainable, task, units: list[_Unit]) -> list[list[dict]]:
    """Train ``units`` as one batched group, then evaluate and cache each member like :func:`run_finetune`."""
    base = trainable.model
    datas = [finetune_data(task, u.job.cfg, u.job.data) for u in units]
    name = files.config_hash([[u.folder.name, u.spec_hash] for u in units])
    checkpoint = (
        units[0].folder.parent / f"group-{name}.safetensors"
    )  # an interrupted group resumes from here
    references = [kl_inputs(base, task, u.job.cfg).get("reference_data") for u in units]
    cfgs = [dataclasses.replace(u.job.cfg, n_examples=len(d)) for u, d in zip(units, datas)]  # every row
    logs = [MonitorLog(u.job.monitor) if u.job.monitor is not None else None for u in units]
    states, losses = batched.finetune_batched(
        base,
        datas,
        cfgs,
        [u.job.intervention for u in units],
        progress=False,
        checkpoint=checkpoint,
        references=references,
        monitors=logs,
    )
    model = trainable.fresh(0)
    out = []
    for u, state, loss, log in zip(units, states, losses, logs):
        model.load_state_dict(state, strict=False)
        model.eval()
        out.append(results.rows(u.key, u.finish(model, task, loss, trainable, log)))
    checkpoint.unlink(missing_ok=True)
    return out


def _one_at_a_time(run_dir, base: Trainable, task, jobs, workers, progress, desc, organism) -> list[dict]:
    """Each job by :func:`run_finetune`, in ``workers`` forked processes on CPU (the path of real models)."""
    workers = min(workers or default_workers(), len(jobs))
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress)
    if workers <= 1 or str(base.model.cfg.device) != "cpu":
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
