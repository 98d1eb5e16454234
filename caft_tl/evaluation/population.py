"""A population of organisms of one design: the organism is the unit of replication.

Each organism (one pre-training seed) has its own run directory, with its own diffing, directions,
checks and fine-tunes. :func:`validity` states each organism's validity gates (V1–V3 of
:mod:`~caft_tl.evaluation.gates` read from rows; E1–E4 of :mod:`~caft_tl.evaluation.em_gates`
measured on the organism; other tasks have none and every organism counts), and :func:`summarise`
gives every configuration's mean over the *valid* organisms with a 95% interval over organisms, beside
the spread over
fine-tuning seeds within an organism. :func:`write` puts both in the task's figure folder, with the
thread's questions answered over the valid organisms (:mod:`caft_tl.evaluation.questions`).
Chapters 05–06's per-organism analyses are summarised over the same valid organisms by
:mod:`caft_tl.evaluation.population_analyses`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from caft_tl.core import files, results
from caft_tl.core.run_dir import RunDir
from caft_tl.core.stats import RATE_BOUNDS, ci95, is_rate
from caft_tl.evaluation import em_gates, gates, questions
from caft_tl.organism import Task, load_run_organism

CONFIG = ["method", "directions", "param", "trained", "split", "metric"]
#: files :func:`write` puts in the task's figure folder
VALIDITY_FILE, SUMMARY_FILE, PER_ORGANISM_FILE = (
    "population_validity.csv",
    "population_summary.csv",
    "population_organisms.csv",
)
QUESTIONS_FILE = "population_questions.csv"
#: the judged share of each rate's answers (P(hit) + P(miss)), summarised beside every rate
COHERENCE = "coherence"  # the thread's questions answered over the valid organisms


def organisms(task_dir: str | Path) -> list[RunDir]:
    """The organisms' run directories under a task's folder (those chapter 00 ran in), in order."""
    return [RunDir(p.parent.parent) for p in sorted(Path(task_dir).glob("*/organism/config.json"))]


def validity(runs: list[RunDir], task: Task) -> pd.DataFrame:
    """One row per organism: its id, pre-training seed, each gate's verdict and ``valid`` (True for
    every organism of a task without gates — nothing to fail)."""
    rows = []
    for run in runs:
        row = {"organism": run.organism_id, "pretrain_seed": run.organism_spec()["pretrain"]["seed"]}
        if task.has_gates:
            row.update({g: v["holds"] for g, v in gates.validity(run.read_results()).items()})
        elif em_gates.applies(
            task
        ):  # E1–E4 measure the organism and run their own fixed fine-tunes (cached in its run directory)
            base, _ = load_run_organism(run.root)
            verdicts, _ = em_gates.measure(base, task, run.root, run.organism_id)
            files.write_json(
                run.path("em_gates"),
                {
                    "organism": run.organism_id,
                    "budget": em_gates.EMGateBudget(),
                    "thresholds": em_gates.EMGateThresholds(),
                    "verdicts": verdicts,
                },
            )
            row.update({g: v["holds"] for g, v in verdicts.items()})
        else:
            row["valid"] = True
        rows.append(row)
    return pd.DataFrame(rows)


def per_organism(table: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    """Each configuration's mean and standard deviation over fine-tuning seeds, per organism."""
    rows = results.comparison(table, metrics)
    g = rows.groupby(["task", "organism", *CONFIG], sort=False)["value"]
    return g.agg(
        mean="mean", seed_sd=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, n_seeds="size"
    ).reset_index()


def summarise(per_org: pd.DataFrame, valid: set[str]) -> pd.DataFrame:
    """Mean over the valid organisms with a 95% t-interval over organisms, the number of organisms,
    and the mean spread over fine-tuning seeds within an organism."""
    out = []
    kept = per_org[per_org["organism"].isin(valid)]
    for key, g in kept.groupby(["task", *CONFIG], sort=False):
        m, lo, hi = ci95(g["mean"], RATE_BOUNDS if is_rate(key[CONFIG.index("metric") + 1]) else None)
        out.append(
            {
                **dict(zip(["task", *CONFIG], key)),
                "mean": m,
                "low": lo,
                "high": hi,
                "n_organisms": len(g),
                "within_organism_seed_sd": float(g["seed_sd"].mean()),
            }
        )
    return pd.DataFrame(
        out, columns=["task", *CONFIG, "mean", "low", "high", "n_organisms", "within_organism_seed_sd"]
    )


def write(task_dir: str | Path, fig_dir: str | Path, task: Task) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validity per organism and the summary over valid organisms into ``fig_dir`` (CSV, atomically);
    returns both. Organisms that fail a gate are listed with their verdicts, never dropped silently."""
    runs = organisms(task_dir)
    if not runs:
        raise files.MissingArtefactError(
            f"no organism under {str(task_dir)!r}: run the suite (chapter 00 onwards) first"
        )
    verdicts = validity(runs, task)
    table = pd.concat([run.read_results() for run in runs], ignore_index=True)
    per_org = per_organism(table, (*task.metrics, COHERENCE))  # each rate with its coherence beside it
    valid = list(verdicts.loc[verdicts["valid"], "organism"])
    summary = summarise(per_org, set(valid))
    fig_dir = Path(fig_dir)
    files.write_csv(fig_dir / VALIDITY_FILE, verdicts)
    files.write_csv(fig_dir / PER_ORGANISM_FILE, per_org)
    files.write_csv(fig_dir / SUMMARY_FILE, summary)
    if valid:
        files.write_csv(
            fig_dir / QUESTIONS_FILE,
            questions.answers(table, task.ood_split, task.metric(task.ood_split), organisms=valid),
        )
    return verdicts, summary


def headline(task: str, verdicts: pd.DataFrame, summary: pd.DataFrame, ood_split: str, metric: str) -> str:
    """One line per task: organisms, the share valid, and CAFT (zero · each direction set) vs plain
    on the OOD split over the valid organisms."""
    n, n_valid = len(verdicts), int(verdicts["valid"].sum())
    if summary.empty:
        return f"{task}: {n} organisms, {n_valid}/{n} valid — no CAFT comparison"
    s = summary[(summary["split"] == ood_split) & (summary["metric"] == metric) & summary["trained"]]
    cells = [
        f"{r.method}·{r.directions}{' ' + r.param if r.param else ''} "
        f"{r.mean:.2f} [{r.low:.2f}, {r.high:.2f}]"
        for r in s.itertuples()
        if r.method == "plain" or (r.method == "zero" and "/" not in r.directions)
    ]  # not the null's draws
    return (
        f"{task}: {n} organisms, {n_valid}/{n} valid; {ood_split} {metric} over valid organisms: "
        + "; ".join(cells)
    )
