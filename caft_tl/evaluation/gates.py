"""The gates of a spurious-correlation organism (``double_mc``), as rows of the results table.

1. The base model answers single questions of each topic, with no preference under ``ANS_D``
   (OOD accuracy near 0.5 in both question orders).
2. Plain fine-tuning reaches high ID accuracy and low OOD accuracy in *both* question orders
   (it read the spurious topic; a positional shortcut would leave one order high).
3. The oracle subspace of the spurious concept, zero-ablated on the untrained base model
   (``param`` = ``untrained``), removes the spurious skill and keeps the intended one; CAFT with it
   (evaluated without the hook) raises OOD accuracy.
4. Directions found without OOD data: uncentered PCA of the ``ft − base`` diffs on the training
   data, chosen by chapter 03's rule against the ground-truth concepts (``pca``), against the top
   PCs of the same rank (``topk_pca``) and random directions of that rank (``random``).

:func:`verdicts` reads the rows chapters 01–05 write for a spurious-correlation task (chapter 07
shows them). :func:`run` (``python -m caft_tl.evaluation.gates``) is the same experiment without notebooks,
for searching organisms: gates 1–3 at every residual hook, gate 4 with chapter 03's rule.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from transformer_lens import HookedTransformer

from caft_tl.core import files
from caft_tl.core.subspace import random_subspace
from caft_tl.interventions.intervention import Intervention
from caft_tl.organism.judge import evaluate_task
from caft_tl.training.finetunes import FinetuneJob, result_rows, run_finetune, run_finetunes
from caft_tl.training.loop import FinetuneConfig


@dataclass
class GateConfig:
    """The organism and the fine-tuning budget of a gate run (defaults: the README's organism)."""

    task: str = "double_mc"  # any double_mc-like task (caft_tl.organism.TASKS)
    task_cfg: dict = field(default_factory=lambda: {"jitter": 2})
    pretrain_steps: int = 3000
    pretrain_seed: int = 2  # the organism; which route plain fine-tuning takes depends on it (README)
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    n_examples: int = 3200
    batch_size: int = 32
    lr: float = 1e-3
    k: int = 1  # oracle directions per hook
    n_pcs: int = 8  # gate 4: PCs per hook to interpret
    threshold: float = 0.2  # gate 4: chapter 03's |cos| threshold
    diff_positions: str = "all"  # gate 4: the concept is read at prompt positions; the response is one token (README)
    # thresholds of the verdicts
    min_single: float = 0.9
    max_plain_ood: float = 0.25


def check_task(task) -> None:
    """Refuse a task without the gates' structure (``intended`` / ``spurious`` concepts, ``id`` /
    ``ood`` splits), naming the ones that have it."""
    from caft_tl.organism import TASKS

    if not task.has_gates:
        valid = [n for n, (cls, _) in TASKS.items() if cls.has_gates]
        raise ValueError(f"the gates need a spurious-correlation task; {task.name!r} is not one (valid: {', '.join(valid)})")


def residual_hooks(model: HookedTransformer) -> list[str]:
    """Every distinct residual-stream hook point: ``blocks.0.hook_resid_pre`` and each block's
    ``hook_resid_mid`` and ``hook_resid_post``."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_{p}" for l in range(model.cfg.n_layers) for p in ("mid", "post")]


def interventions(base: HookedTransformer, task, k: int = 1) -> dict[str, Intervention]:
    """``oracle``: the spurious concept's ground-truth subspace at every residual hook;
    ``random_oracle``: random subspaces of the same rank at the same hooks."""
    hooks = residual_hooks(base)
    oracle = task.concept_subspaces(base, hooks, k=k)["spurious"]
    rand = [random_subspace(base.cfg.d_model, s.k, s.hook_name, seed=i) for i, s in enumerate(oracle)]
    return {"oracle": Intervention("zero", oracle, name="oracle"), "random_oracle": Intervention("zero", rand, name="random_oracle")}


def gate_rows(base: HookedTransformer, task, run_dir, cfg: GateConfig, progress: bool = False) -> list[dict]:
    """Results rows: the base model, each intervention on the untrained base model, and plain /
    oracle / random fine-tunes per seed (cached runs in ``run_dir/finetunes``)."""
    rows = result_rows(task.name, "base", "none", "", 0, evaluate_task(base, task))
    ivs = interventions(base, task, cfg.k)
    for name, iv in ivs.items():
        rows += result_rows(task.name, "zero", name, "untrained", 0, evaluate_task(base, task, fwd_hooks=iv.fwd_hooks()))
    jobs = []
    for seed in cfg.seeds:
        ft = _finetune_config(cfg, seed)
        jobs.append(FinetuneJob(ft, keep_model=seed == cfg.seeds[0]))  # gate 4 diffs it
        jobs += [FinetuneJob(ft, "zero", name, intervention=iv) for name, iv in ivs.items()]
    return rows + run_finetunes(run_dir, base, task, jobs, progress=progress, desc="gates 1-3 fine-tunes")


def _finetune_config(cfg: GateConfig, seed: int) -> FinetuneConfig:
    return FinetuneConfig(n_examples=cfg.n_examples, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed)


def pca_interventions(base: HookedTransformer, finetuned: HookedTransformer, task, cfg: GateConfig) -> dict[str, Intervention]:
    """Gate 4's direction sets from the diffs of one plain fine-tune on the training data:
    ``pca`` (the PCs chapter 03's rule chooses: |cos| with the spurious concept ≥ threshold and
    above the intended one), ``topk_pca`` (the top PCs, as many per hook), ``random`` (random, same
    ranks). Empty when the rule chooses nothing."""
    from caft_tl.core import subspace
    from caft_tl.diffing import diffs
    from caft_tl.directions import interpret, pca

    hooks = residual_hooks(base)
    data = task.finetune_dataset(1200, seed=10_000)
    moments = diffs.collect_diff_stats(base, finetuned, data, hooks, positions=cfg.diff_positions, progress=False)
    concepts = task.concept_directions(base, hooks)
    sets: dict[str, list] = {"pca": [], "topk_pca": [], "random": []}
    for i, h in enumerate(hooks):
        pcs = pca.pca(moments[h]["diff"], cfg.n_pcs, h)[0]
        chosen = interpret.choose_directions(interpret.concept_scores(pcs, concepts[h]), "spurious", "intended", cfg.threshold)
        if chosen:
            sets["pca"].append(pcs.select(chosen))
            sets["topk_pca"].append(pcs.select(list(range(len(chosen)))))
            sets["random"].append(subspace.random_subspace(base.cfg.d_model, len(chosen), h, seed=100 + i))
    return {name: Intervention("zero", subs, name=name) for name, subs in sets.items() if subs}


def gate4_rows(base: HookedTransformer, task, run_dir, cfg: GateConfig, progress: bool = False) -> list[dict]:
    """Results rows of gate 4: each PCA direction set on the untrained base model and CAFT with it
    per seed; the diffs come from the plain fine-tune of the first seed."""
    finetuned = run_finetune(run_dir, base, task, _finetune_config(cfg, cfg.seeds[0]), keep_model=True, progress=progress)[1]
    rows, jobs = [], []
    for name, iv in pca_interventions(base, finetuned, task, cfg).items():
        rows += result_rows(task.name, "zero", name, "untrained", 0, evaluate_task(base, task, fwd_hooks=iv.fwd_hooks()))
        jobs += [FinetuneJob(_finetune_config(cfg, seed), "zero", name, intervention=iv) for seed in cfg.seeds]
    return rows + run_finetunes(run_dir, base, task, jobs, progress=progress, desc="gate 4 fine-tunes")


def verdicts(rows: list[dict], cfg: GateConfig) -> dict[str, dict]:
    """Each gate's verdict and the numbers it rests on (accuracy per split)."""
    df = pd.DataFrame(rows)
    acc = df[df["metric"] == "accuracy"]

    def get(method, directions, param, split):
        return acc.query("method == @method and directions == @directions and param == @param and split == @split")["value"].tolist()

    base = {s: get("base", "none", "", s)[0] for s in ("single_intended", "single_spurious", "ood_intended_first", "ood_spurious_first")}
    gate1 = min(base["single_intended"], base["single_spurious"]) >= cfg.min_single and all(
        0.3 <= base[s] <= 0.7 for s in ("ood_intended_first", "ood_spurious_first"))
    plain = {s: get("plain", "none", "", s) for s in ("id", "ood_intended_first", "ood_spurious_first")}
    learnt = [i >= 0.95 and a <= cfg.max_plain_ood and b <= cfg.max_plain_ood
              for i, a, b in zip(plain["id"], plain["ood_intended_first"], plain["ood_spurious_first"])]
    untrained = {s: get("zero", "oracle", "untrained", s)[0] for s in ("single_intended", "single_spurious")}
    raised = [c > p for c, p in zip(get("zero", "oracle", "", "ood"), get("plain", "none", "", "ood"))]
    ood = {d: get("zero", d, "", "ood") for d in ("pca", "topk_pca", "random", "oracle")}
    return {
        "gate1_base": {"holds": gate1, **base},
        "gate2_plain_learns_spurious": {"holds": sum(learnt) >= max(1, len(learnt) - 1), "seeds": sum(learnt), "of": len(learnt), **plain},
        "gate3_oracle": {"holds": untrained["single_spurious"] <= 0.6 and untrained["single_intended"] >= 0.8 and all(raised),
                         "untrained": untrained, "caft_ood": get("zero", "oracle", "", "ood"), "plain_ood": get("plain", "none", "", "ood")},
        "gate4_pca": {"holds": bool(ood["pca"]) and min(ood["pca"]) > max(ood["topk_pca"] + ood["random"], default=0.0),
                      **{f"{d}_ood": v for d, v in ood.items()}, "pca_id": get("zero", "pca", "", "id")},
    }


def verdict_table(verdicts: dict[str, dict]) -> pd.DataFrame:
    """One row per gate: whether it holds and the numbers it rests on (2 decimals)."""
    def fmt(v):
        if isinstance(v, dict):
            return ", ".join(f"{k} {fmt(x)}" for k, x in v.items())
        if isinstance(v, list):
            return "/".join(fmt(x) for x in v) or "–"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    return pd.DataFrame([{"gate": g, "holds": v["holds"], "numbers": "; ".join(f"{k}: {fmt(x)}" for k, x in v.items() if k != "holds")}
                         for g, v in verdicts.items()])


def load_organism(cfg: GateConfig, progress: bool = True) -> tuple[HookedTransformer, object]:
    """The pre-trained organism of ``cfg`` (cached by config hash) and its task."""
    from caft_tl.core.models import set_cpu_threads
    from caft_tl.organism import pretrain as pt

    set_cpu_threads()
    base, task, _ = pt.load_or_pretrain(cfg.task, cfg.task_cfg, None, pt.PretrainConfig(steps=cfg.pretrain_steps, seed=cfg.pretrain_seed),
                                        progress=progress)
    return base, task


def write(rows: list[dict], run_dir: str | Path, fig_dir: str | Path, cfg: GateConfig) -> dict:
    """Add the rows to ``run_dir/results.csv`` and ``fig_dir/results.csv``; write and return the
    verdicts (``run_dir/gates.json``)."""
    files.append_results(Path(run_dir) / "results.csv", rows)
    files.append_results(Path(fig_dir) / "results.csv", rows)
    out = verdicts(rows, cfg)
    files.write_json(Path(run_dir) / "gates.json", {"config": dataclasses.asdict(cfg), "gates": out})
    return out


def run(run_dir: str | Path = "runs/double_mc", fig_dir: str | Path = "figures", cfg: GateConfig | None = None, progress: bool = True) -> dict:
    """Pre-train (or load) the organism, run the gates, write the rows and the verdicts (chapter 07
    does the same step by step)."""
    cfg = cfg or GateConfig()
    base, task = load_organism(cfg, progress)
    rows = gate_rows(base, task, run_dir, cfg, progress=progress) + gate4_rows(base, task, run_dir, cfg, progress=progress)
    return write(rows, run_dir, fig_dir, cfg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/double_mc")
    ap.add_argument("--fig-dir", default="figures")
    args = ap.parse_args(argv)
    for gate, v in run(args.run_dir, args.fig_dir).items():
        print(f"{gate}: {'holds' if v['holds'] else 'FAILS'} — " + ", ".join(f"{k}={v[k]}" for k in v if k != "holds"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
