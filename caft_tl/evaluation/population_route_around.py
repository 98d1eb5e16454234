"""Chapters 09–10's tables over a task's population of valid organisms: does the model route around
the ablation, over organisms rather than within one.

Each organism's run directory holds :data:`TABLES`' files (chapter 09's ``leakage.csv``, chapter 10's
``iterated.csv`` and ``training_length.csv``). :func:`write` reads them for the *valid* organisms,
averages each organism's rows over its fine-tuning seeds, and gives per configuration and quantity
the mean over organisms with a 95% t-interval over organisms (:func:`caft_tl.core.stats.ci95`) and the
number of organisms; a missing file is counted, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from caft_tl.core import files
from caft_tl.core.stats import RATE_BOUNDS, ci95, is_rate
from caft_tl.evaluation import population


@dataclass(frozen=True)
class Table:
    """One per-organism file: its artefact name, the task-level summary it becomes, the columns that
    name a configuration and the numbers averaged."""

    artefact: str
    summary: str
    key: tuple[str, ...]
    values: tuple[str, ...]


TABLES = (
    Table(
        "leakage",
        "population_leakage.csv",
        ("method", "directions", "hook", "ablated", "concept"),
        ("energy_in_subspace", "concept_shift", "recovered_share"),
    ),
    Table("iterated", "population_iterated.csv", ("arm", "round", "split", "metric"), ("value", "rank")),
    Table(
        "training_length",
        "population_training_length.csv",
        ("length", "method", "split", "metric"),
        ("value",),
    ),
)
#: the columns of every summary after its key
SUMMARY = ["quantity", "mean", "low", "high", "n_organisms"]


def organism_means(rows: pd.DataFrame, table: Table) -> pd.DataFrame:
    """One organism's rows averaged over its fine-tuning seeds: one row per configuration.

    Example:
        organism_means(files.read_csv(run.require("iterated")), TABLES[1])
    """
    missing = [c for c in (*table.key, *table.values) if c not in rows.columns]
    if missing:
        raise ValueError(
            f"the {table.artefact} table lacks column(s) {missing} (it has {list(rows.columns)}); "
            "re-run the chapter that wrote it"
        )
    return rows.groupby(list(table.key), as_index=False, sort=False)[list(table.values)].mean()


def over_organisms(per_organism: pd.DataFrame, table: Table) -> pd.DataFrame:
    """Per configuration and quantity: the mean over organisms, a 95% t-interval over organisms (clipped
    to [0, 1] for a rate and an energy share) and their number (NaN values, e.g. the energy share at a
    hook a set does not ablate, are left out).

    Args:
        per_organism: :func:`organism_means` of each organism, concatenated.
        table: which file they came from.

    Returns:
        the key columns, then :data:`SUMMARY`.

    Example:
        over_organisms(pd.concat(means), TABLES[2])
    """
    out = []
    for key, g in per_organism.groupby(list(table.key), sort=False):
        for quantity in table.values:
            v = g[quantity].dropna()
            if v.empty:
                continue
            rate = quantity == "energy_in_subspace" or (
                quantity == "value" and is_rate(key[list(table.key).index("metric")])
            )
            mean, low, high = ci95(v, RATE_BOUNDS if rate else None)
            out.append(
                {
                    **dict(zip(table.key, key)),
                    "quantity": quantity,
                    "mean": mean,
                    "low": low,
                    "high": high,
                    "n_organisms": len(v),
                }
            )
    return pd.DataFrame(out, columns=[*table.key, *SUMMARY])


def write(task_dir: str | Path, fig_dir: str | Path, valid: list[str]) -> dict[str, list[str]]:
    """Each :data:`TABLES` summary over the ``valid`` organisms (ids) into ``fig_dir`` (CSV, atomically;
    with no organism an empty table, so no older one is left); returns ``{summary file: organisms
    whose file is missing}``.

    Example:
        write("runs/default/persona_em", "figures/persona_em", ["persona_em-s0-…"])
    """
    runs = [r for r in population.organisms(task_dir) if r.organism_id in valid]
    missing: dict[str, list[str]] = {}
    for table in TABLES:
        means, missing[table.summary] = [], []
        for run in runs:
            path = run.path(table.artefact)
            if path.exists():
                means.append(organism_means(files.read_csv(path), table))
            else:
                missing[table.summary].append(run.organism_id)
        per_organism = (
            pd.concat(means, ignore_index=True)
            if means
            else pd.DataFrame(columns=[*table.key, *table.values])
        )
        files.write_csv(Path(fig_dir) / table.summary, over_organisms(per_organism, table))
    return missing
