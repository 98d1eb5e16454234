"""Chapters 05–06's per-organism analyses, over a task's population of valid organisms.

Each organism's figure folder holds three analyses of its own fine-tunes: :data:`NULL_FILE`
(where CAFT with each direction set falls in the organism's ≥ 20-draw random null, chapter 05),
:data:`REDUCTION_FILE` (the EM reduction factor, chapter 05, written only when the task's OOD metric
is :data:`EM_METRIC`) and :data:`CURVE_FILE` (the distance from the fewer-examples curve, chapter 06).
:func:`write` reads them for the *valid* organisms and gives, per configuration (method,
directions, param), the mean over organisms with a 95% interval over organisms and the number of
organisms: a t-interval (:func:`caft_tl.core.stats.ci95`) for the null's percentile and the
reduction factor, a bootstrap resampling organisms (:func:`caft_tl.core.stats.bootstrap_ci95`) for
the distance from the curve. :data:`COVERAGE_FILE` says, per file and valid organism, whether it was
read, is missing, or is not written for the task; a missing file is reported, never an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from caft_tl.core import files
from caft_tl.core.stats import PERCENTILE_BOUNDS, bootstrap_ci95, ci95
from caft_tl.evaluation import population
from caft_tl.organism import Task

KEY = ["method", "directions", "param"]
#: each organism's analyses, in its figure folder (chapters 05 and 06 write them)
NULL_FILE, REDUCTION_FILE, CURVE_FILE = "null_percentile.csv", "reduction_factor.csv", "above_curve.csv"
#: the task-level files :func:`write` puts in the task's figure folder
NULL_SUMMARY_FILE = "population_null_percentile.csv"
REDUCTION_SUMMARY_FILE = "population_reduction_factor.csv"
CURVE_SUMMARY_FILE = "population_above_curve.csv"
COVERAGE_FILE = "population_analyses.csv"
#: chapter 05 writes :data:`REDUCTION_FILE` only for a task whose OOD metric is this one
EM_METRIC = "misalignment_rate"
#: a valid organism's file in :data:`COVERAGE_FILE`
READ, MISSING, NOT_WRITTEN = (
    "read",
    "missing",
    f"not written for this task (its OOD metric is not {EM_METRIC})",
)
#: the text columns of the task-level files (the others are numbers)
TEXT = [*KEY, "organisms", "percentiles"]

#: per file: the columns that name a configuration in it, and the numbers :func:`write` reads
#: (chapter 05 places only the zero-ablation (CAFT) sets in the null, by ``directions`` alone)
COLUMNS = {
    NULL_FILE: (["directions"], ["null_percentile", "null_draws"]),
    REDUCTION_FILE: (KEY, ["excess", "reduction_factor"]),
    CURVE_FILE: (KEY, ["above_curve", "above_curve_low", "above_curve_high"]),
}


def read(path: str | Path) -> pd.DataFrame:
    """One organism's analysis file (named as in :data:`COLUMNS`): its configuration and number
    columns (the null's rows get ``method`` zero and an empty ``param``). A file that is not a
    table, lacks a column, holds a non-number or repeats a configuration is refused in one line."""
    path = Path(path)
    key, values = COLUMNS[path.name]
    files.verify(path)
    try:
        df = pd.read_csv(
            path,
            dtype={**{k: str for k in key}, **{v: float for v in values}},
            keep_default_na=False,
            na_values={v: ["", "nan", "NaN"] for v in values},
        )
    except (ValueError, UnicodeDecodeError) as e:
        raise files.CorruptFileError(
            f"cannot read {str(path)!r}: {str(e).splitlines()[0]}; re-run the chapter that wrote it"
        ) from None
    missing = [c for c in key + values if c not in df.columns]
    if missing:
        raise ValueError(
            f"{str(path)!r} lacks column(s) {missing} (it has {list(df.columns)}); "
            "re-run the chapter that wrote it"
        )
    if df.duplicated(key).any():
        raise ValueError(
            f"{str(path)!r} repeats configuration(s) "
            f"{df.loc[df.duplicated(key), key].drop_duplicates().values.tolist()}"
        )
    if path.name == NULL_FILE:
        df = df.assign(method="zero", param="")
    return df[KEY + values]


def gather(folders: dict[str, Path], file: str) -> tuple[pd.DataFrame, list[str]]:
    """The rows of ``file`` in each organism's figure folder (``{organism id: folder}``), with an
    ``organism`` column first, and the organisms whose folder lacks it."""
    frames, missing = [], []
    for organism, folder in folders.items():
        path = Path(folder) / file
        if path.exists():
            frames.append(read(path).assign(organism=organism))
        else:
            missing.append(organism)
    columns = ["organism", *KEY, *COLUMNS[file][1]]
    return (
        pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
    ), missing


def null_places(rows: pd.DataFrame) -> pd.DataFrame:
    """Per direction set: its mean percentile in the null over organisms with a 95% t-interval
    (clipped to 0–100), the number of organisms with a percentile, the fewest draws an organism's
    null had, and each organism's percentile (``percentiles``, in the order of ``organisms``)."""
    out = []
    for key, g in rows.groupby(KEY, sort=False):
        m, lo, hi = ci95(g["null_percentile"], PERCENTILE_BOUNDS)
        out.append(
            {
                **dict(zip(KEY, key)),
                "mean": m,
                "low": lo,
                "high": hi,
                "n_organisms": int(g["null_percentile"].notna().sum()),
                "null_draws": g["null_draws"].min(),
                "organisms": "; ".join(g["organism"]),
                "percentiles": "; ".join(f"{v:g}" for v in g["null_percentile"]),
            }
        )
    return pd.DataFrame(
        out, columns=[*KEY, "mean", "low", "high", "n_organisms", "null_draws", "organisms", "percentiles"]
    )


def reduction_factors(rows: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: the EM reduction factor's mean over organisms with a 95% t-interval —
    infinite with no interval when the method is at or below base on an organism (``n_infinite``
    of them) — and the excess misalignment over base with its own t-interval, which stays finite."""
    out = []
    for key, g in rows.groupby(KEY, sort=False):
        factor = g["reduction_factor"].dropna()
        n_inf = int(np.isinf(factor).sum())
        m, lo, hi = (float(factor.mean()), float("nan"), float("nan")) if n_inf else ci95(factor)
        em, elo, ehi = ci95(g["excess"])
        out.append(
            {
                **dict(zip(KEY, key)),
                "mean": m,
                "low": lo,
                "high": hi,
                "n_organisms": len(factor),
                "n_infinite": n_inf,
                "excess_mean": em,
                "excess_low": elo,
                "excess_high": ehi,
            }
        )
    return pd.DataFrame(
        out,
        columns=[
            *KEY,
            "mean",
            "low",
            "high",
            "n_organisms",
            "n_infinite",
            "excess_mean",
            "excess_low",
            "excess_high",
        ],
    )


def curve_distances(rows: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per configuration: the mean over organisms of its distance from the fewer-examples curve
    with a 95% bootstrap interval resampling organisms, the number of organisms with a distance,
    the number whose point lies outside the curve's x range (no distance), and the mean width of the
    organisms' own intervals over fine-tuning seeds."""
    out = []
    for key, g in rows.groupby(KEY, sort=False):
        m, lo, hi = bootstrap_ci95(g["above_curve"], n_boot, seed)
        out.append(
            {
                **dict(zip(KEY, key)),
                "mean": m,
                "low": lo,
                "high": hi,
                "n_organisms": int(g["above_curve"].notna().sum()),
                "n_outside": int(g["above_curve"].isna().sum()),
                "within_organism_width": float((g["above_curve_high"] - g["above_curve_low"]).mean()),
            }
        )
    return pd.DataFrame(
        out, columns=[*KEY, "mean", "low", "high", "n_organisms", "n_outside", "within_organism_width"]
    )


def figure_folders(task_dir: str | Path, fig_dir: str | Path, valid: list[str]) -> dict[str, Path]:
    """``{organism id: figure folder}`` of the valid organisms: the folder of ``fig_dir`` named as
    the organism's run directory under ``task_dir`` (the suite's ``seed<s>``)."""
    folders = {}
    for run in population.organisms(task_dir):
        if (organism := run.organism_id) in valid:
            folders[organism] = Path(fig_dir) / run.root.name
    if unknown := [o for o in valid if o not in folders]:
        raise ValueError(f"valid organism(s) {unknown} have no run directory under {str(task_dir)!r}")
    return folders


def write(
    task_dir: str | Path, fig_dir: str | Path, task: Task, valid: list[str], n_boot: int = 1000
) -> pd.DataFrame:
    """The three summaries over the ``valid`` organisms (ids) and :data:`COVERAGE_FILE` into
    ``fig_dir`` (CSV, atomically; a summary with no organism is written empty, so no older one is
    left); returns the coverage: ``file, organism, status`` (:data:`READ`, :data:`MISSING` or
    :data:`NOT_WRITTEN`)."""
    folders = figure_folders(task_dir, fig_dir, valid)
    summaries = {
        NULL_FILE: (NULL_SUMMARY_FILE, null_places),
        REDUCTION_FILE: (REDUCTION_SUMMARY_FILE, reduction_factors),
        CURVE_FILE: (CURVE_SUMMARY_FILE, lambda rows: curve_distances(rows, n_boot)),
    }
    coverage = []
    for file, (summary_file, summarise) in summaries.items():
        written = file != REDUCTION_FILE or task.metric(task.ood_split) == EM_METRIC
        rows, missing = gather(folders if written else {}, file)
        files.write_csv(Path(fig_dir) / summary_file, summarise(rows))
        coverage += [
            {
                "file": file,
                "organism": o,
                "status": MISSING if o in missing else READ if written else NOT_WRITTEN,
            }
            for o in folders
        ]
    coverage = pd.DataFrame(coverage, columns=["file", "organism", "status"])
    files.write_csv(Path(fig_dir) / COVERAGE_FILE, coverage)
    return coverage


def notes(coverage: pd.DataFrame) -> list[str]:
    """One line per file that is not read for every valid organism: not written for the task, or
    missing for which organisms."""
    out = []
    for file, g in coverage.groupby("file", sort=False):
        if (g["status"] == NOT_WRITTEN).all():
            out.append(f"{file}: {NOT_WRITTEN}")
        elif missing := list(g.loc[g["status"] == MISSING, "organism"]):
            out.append(
                f"{file}: missing for {len(missing)} of {len(g)} valid organisms ({', '.join(missing)})"
            )
    return out


def read_summary(path: str | Path) -> pd.DataFrame:
    """A task-level file of :func:`write`: :data:`TEXT` columns as text, counts (``n_*``) as
    integers, the others as floats."""
    df = files.read_csv(path, dtype=str, keep_default_na=False)
    for c in df.columns.difference(TEXT):
        try:
            df[c] = df[c].astype(int) if c.startswith("n_") else df[c].replace("", np.nan).astype(float)
        except ValueError:
            raise files.CorruptFileError(
                f"cannot read {str(path)!r}: column {c!r} holds a non-number; re-run the suite to rewrite it"
            ) from None
    return df
