"""The gates of one organism without notebooks (``python -m caft_tl.runner.gate_search``), for
searching organisms (``scripts/search_organisms.py``): pre-train (or load) the organism, run the
steps of chapters 01–05 that the gates read — the validity gates with the oracle at every residual
hook, and the outcomes with chapter 03's allowed explainer and direction-set builder — and write rows
and verdicts (:func:`caft_tl.evaluation.gates.validity` and :func:`~caft_tl.evaluation.gates.outcomes`)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from transformer_lens import HookedTransformer

from caft_tl.core import files, results
from caft_tl.core.models import residual_hooks
from caft_tl.core.run_dir import RunDir
from caft_tl.core.subspace import random_subspace
from caft_tl.diffing import diffs
from caft_tl.directions import explain, information, interpret, oracle, registry
from caft_tl.directions.pca import pca
from caft_tl.evaluation.gates import GateThresholds, check_task, outcomes, validity
from caft_tl.interventions.intervention import Intervention
from caft_tl.organism import judge
from caft_tl.training.finetunes import FinetuneJob, run_finetune, run_finetunes
from caft_tl.training.loop import FinetuneConfig


@dataclass
class GateConfig:
    """The organism and the fine-tuning budget of a gate run."""

    task: str = "double_mc"  # any task with gates (caft_tl.organism.TASKS)
    task_cfg: dict = field(default_factory=lambda: {"jitter": 2})
    pretrain_steps: int = 3000
    pretrain_seed: int = 2
    pretrain_threads: int = (
        1  # torch threads while pre-training (another float reduction order: another organism)
    )
    pretrain_decay: float = (
        0.0  # share of the last pre-training steps over which the rate decays to zero (PretrainConfig.decay)
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    n_examples: int = 3200
    batch_size: int = 32
    lr: float = 1e-3
    k: int = 1  # oracle directions per hook
    n_pcs: int = 8  # gate 4: PCs per hook to interpret
    min_detection: float = 0.7  # gate 4: chapter 03's choice rule (held-out detection a concept label needs)
    threshold: float = 0.2  # gate 4: the oracle rule's |cos| threshold (oracle_pca only)
    diff_positions: str = "all"  # gate 4: the concept is read at prompt positions; the response is one token
    thresholds: GateThresholds = field(default_factory=GateThresholds)


def interventions(base: HookedTransformer, task, k: int = 1) -> dict[str, Intervention]:
    """``oracle``: the spurious concept's ground-truth subspace at every residual hook;
    ``random_oracle``: random subspaces of the same rank at the same hooks."""
    oracle = task.concept_subspaces(base, residual_hooks(base), k=k)["spurious"]
    rand = [random_subspace(base.cfg.d_model, s.k, s.hook_name, seed=i) for i, s in enumerate(oracle)]
    return {
        "oracle": Intervention("zero", oracle, name="oracle"),
        "random_oracle": Intervention("zero", rand, name="random_oracle"),
    }


def _finetune_config(cfg: GateConfig, seed: int) -> FinetuneConfig:
    return FinetuneConfig(n_examples=cfg.n_examples, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed)


def _untrained_rows(base, task, organism: str, name: str, iv: Intervention) -> list[dict]:
    key = results.RowKey(task.name, organism, iv.mode, name, iv.param, trained=False)
    return results.rows(key, judge.evaluate_task(base, task, fwd_hooks=iv.fwd_hooks()))


def gate_rows(
    base: HookedTransformer, task, run_dir, cfg: GateConfig, organism: str, progress: bool = False
) -> list[dict]:
    """Results rows: the base model, each intervention on the untrained base model, and plain /
    oracle / random fine-tunes per seed (cached runs in ``run_dir/finetunes``)."""
    rows = results.rows(
        results.RowKey(task.name, organism, "base", trained=False), judge.evaluate_task(base, task)
    )
    ivs = interventions(base, task, cfg.k)
    for name, iv in ivs.items():
        rows += _untrained_rows(base, task, organism, name, iv)
    jobs = []
    for seed in cfg.seeds:
        ft = _finetune_config(cfg, seed)
        jobs.append(FinetuneJob(ft, keep_model=seed == cfg.seeds[0]))  # gate 4 diffs it
        jobs += [FinetuneJob(ft, "zero", name, intervention=iv) for name, iv in ivs.items()]
    return rows + run_finetunes(
        run_dir, base, task, jobs, progress=progress, desc="gates 1-3 fine-tunes", organism=organism
    )


#: gate 4's direction sets (:mod:`caft_tl.directions.registry`)
GATE4_SETS = ["pca", "topk_pca", "random", "oracle_pca"]


def pca_interventions(
    base: HookedTransformer, finetuned: HookedTransformer, task, cfg: GateConfig
) -> dict[str, Intervention]:
    """Gate 4's direction sets, built as chapter 03 builds them from the diffs of one plain
    fine-tune on the training data: ``pca`` / ``topk_pca`` / ``random`` from the allowed
    explainer's choice (:func:`caft_tl.directions.explain.choose`, reading
    :class:`~caft_tl.directions.information.InterpretationInputs` only), and ``oracle_pca`` from the
    ground-truth rule (:func:`caft_tl.directions.oracle.chosen_by_hook`: the upper bound, left out
    when it chooses nothing)."""
    hooks = residual_hooks(base)
    data = task.finetune_dataset(1200, seed=10_000)
    moments = diffs.collect_diff_stats(
        base, finetuned, data, hooks, positions=cfg.diff_positions, progress=False
    )
    pcs = {h: pca(moments[h]["diff"], cfg.n_pcs, h)[0] for h in hooks}
    inputs = information.interpretation_inputs(task, finetune_positions=cfg.diff_positions)
    chosen = explain.choose(
        explain.explain_subspaces(base, pcs, inputs), inputs, hooks, cfg.min_detection
    ).chosen
    concepts = task.concept_directions(base, hooks)  # ground truth: only for the oracle's set
    scores = pd.concat([interpret.concept_scores(pcs[h], concepts[h]) for h in hooks], ignore_index=True)
    oracle_chosen = oracle.chosen_by_hook(scores, "spurious", "intended", cfg.threshold)
    truth = registry.GroundTruth({h: concepts[h]["spurious"] for h in hooks}, oracle_chosen)
    set_inputs = registry.SetInputs(base.cfg.d_model, pcs=pcs, chosen=chosen, truth=truth)
    built = registry.build(set_inputs, GATE4_SETS)
    return {name: Intervention("zero", subs, name=name) for name, subs in built.items()}


def gate4_rows(
    base: HookedTransformer, task, run_dir, cfg: GateConfig, organism: str, progress: bool = False
) -> list[dict]:
    """Results rows of gate 4: each PCA direction set on the untrained base model and CAFT with it
    per seed; the diffs come from the plain fine-tune of the first seed."""
    finetuned = run_finetune(
        run_dir,
        base,
        task,
        _finetune_config(cfg, cfg.seeds[0]),
        keep_model=True,
        progress=progress,
        organism=organism,
    )[1]
    rows, jobs = [], []
    for name, iv in pca_interventions(base, finetuned, task, cfg).items():
        rows += _untrained_rows(base, task, organism, name, iv)
        jobs += [
            FinetuneJob(_finetune_config(cfg, seed), "zero", name, intervention=iv) for seed in cfg.seeds
        ]
    return rows + run_finetunes(
        run_dir, base, task, jobs, progress=progress, desc="gate 4 fine-tunes", organism=organism
    )


def load_organism(cfg: GateConfig, run_dir, progress: bool = True) -> tuple[HookedTransformer, object]:
    """The pre-trained organism of ``cfg`` (cached by config hash), exported into ``run_dir/organism``,
    and its task."""
    from caft_tl.core.models import set_cpu_threads
    from caft_tl.training import pretrain as pt

    set_cpu_threads(cfg.pretrain_threads)
    base, task, checkpoint = pt.load_or_pretrain(
        cfg.task,
        cfg.task_cfg,
        None,
        pt.PretrainConfig(steps=cfg.pretrain_steps, seed=cfg.pretrain_seed, decay=cfg.pretrain_decay),
        progress=progress,
    )
    set_cpu_threads()
    check_task(task)
    pt.export_organism(run_dir, base, checkpoint)
    return base, task


def write(rows: list[dict], run_dir: str | Path, cfg: GateConfig) -> dict:
    """Add the rows to ``run_dir/results.csv``; write and return the validity gates and the outcomes
    (``run_dir/gates.json``)."""
    run = RunDir(run_dir)
    results.append(run.results, rows)
    out = {"validity": validity(rows, cfg.thresholds), "outcomes": outcomes(rows)}
    files.write_json(run.path("gates"), {"config": dataclasses.asdict(cfg), **out})
    return out


def run(
    run_dir: str | Path = "runs/gate_search", cfg: GateConfig | None = None, progress: bool = True
) -> dict:
    """Pre-train (or load) the organism, run the gates, write the rows and the verdicts."""
    cfg = cfg or GateConfig()
    base, task = load_organism(cfg, run_dir, progress)
    organism = RunDir(run_dir).organism_id
    rows = gate_rows(base, task, run_dir, cfg, organism, progress=progress) + gate4_rows(
        base, task, run_dir, cfg, organism, progress=progress
    )
    return write(rows, run_dir, cfg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/gate_search")
    args = ap.parse_args(argv)
    out = run(args.run_dir)
    for gate, v in {**out["validity"], **out["outcomes"]}.items():
        print(
            f"{gate}: {'holds' if v['holds'] else 'FAILS'} — "
            + ", ".join(f"{k}={v[k]}" for k in v if k != "holds")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
