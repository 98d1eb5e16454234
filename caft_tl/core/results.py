"""The results table: one row per measured number, in one schema that every writer and reader uses.

Columns (``COLUMNS``, in this order): ``task, organism, method, directions, param, trained, seed,
split, metric, value`` —

- ``organism``: a short stable id of the organism a row was measured on (:func:`organism_id`:
  task, design and pre-training seed), or ``real:<model>``;
- ``method``: ``base``, ``plain``, ``fewer_examples`` or an intervention mode;
- ``directions``: ``none`` or a direction set (``pca``, ``oracle``, …); a draw of the null
  distribution of random subspaces is ``random/<draw>`` (``random/0`` … ``random/19``); a check on
  one direction of a set is ``<set>/<hook>/<direction>``;
- ``method`` ``interpretation`` (trained false): chapter 03's scores of a direction set against
  the ground truth, ``split`` a hook or ``all``, metrics ``precision``, ``recall``, ``oracle_span``, …;
- ``param``: the method's setting only (``k=-3``, ``alpha=4``, ``n=96``), else empty;
- ``trained``: false for measurements of the untrained base model (chapter 01's ``base`` rows,
  chapter 04's checks), true for fine-tunes.

Rows are made by :func:`rows` from a :class:`RowKey` and ``{split: {metric: value}}``; tables are
written with :func:`append` (atomic; a row replaces an earlier one with the same key) and read
with :func:`read` (which refuses a file in the old format) and :func:`select`.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from caft_tl.core import files
from caft_tl.core.files import atomic_write

COLUMNS = ("task", "organism", "method", "directions", "param", "trained", "seed", "split", "metric", "value")
KEY_COLUMNS = COLUMNS[:-1]
#: the file name of a results table, in a run directory and in the figure folder
RESULTS_FILE = "results.csv"


class OldResultsFormatError(ValueError):
    """A results file written before the ``organism`` and ``trained`` columns existed."""


class MissingRowsError(LookupError):
    """A reader needs rows that no chapter has written yet."""


@dataclass(frozen=True)
class RowKey:
    """Everything that identifies a measurement except its split, metric and value."""

    task: str
    organism: str
    method: str
    directions: str = "none"
    param: str = ""
    trained: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.trained, bool):
            raise TypeError(f"trained = {self.trained!r}; expected True or False")


def organism_id(task: str, seed: int, design_hash: str) -> str:
    """``<task>-s<pre-training seed>-<6 hex of the organism's config hash>``, e.g. ``double_mc-s2-9aaa79``."""
    return f"{task}-s{seed}-{design_hash[:6]}"


def real_organism(model: str) -> str:
    """The ``organism`` of rows measured on a real model: ``real:<model folder or hub name>``."""
    return f"real:{Path(str(model)).name or model}"


def rows(key: RowKey, metrics: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Rows of the table from ``{split: {metric: value}}``, all with ``key``."""
    head = dataclasses.asdict(key)
    return [
        {**head, "split": split, "metric": metric, "value": value}
        for split, ms in metrics.items()
        for metric, value in ms.items()
    ]


def check(row: dict[str, Any]) -> None:
    """Refuse a row that does not have exactly the schema's columns."""
    if set(row) != set(COLUMNS):
        raise ValueError(f"result row has columns {sorted(row)}; expected exactly {list(COLUMNS)}")


def _key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row[c]) for c in KEY_COLUMNS)


def append(path: str | os.PathLike, new_rows: list[dict[str, Any]]) -> None:
    """Add rows to a results file, replacing earlier rows with the same key (every column but
    ``value``), rewriting the file atomically — so re-running a chapter updates its numbers in place."""
    path = Path(path)
    for row in new_rows:
        check(row)
    existing = {}
    if path.exists():
        files.verify(path)
        _check_header(path)
        for line, row in csv_rows(path):  # as strings: values are rewritten exactly as they were read
            check_csv_row(row, f"{path}:{line}: ")
            existing[_key(dict(zip(COLUMNS, row)))] = dict(zip(COLUMNS, row))
    existing.update({_key(r): {c: r[c] for c in COLUMNS} for r in new_rows})
    with atomic_write(path) as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(existing.values())


def read(path: str | os.PathLike) -> pd.DataFrame:
    """A results file as a DataFrame (``trained`` as bool, ``seed`` as int, ``value`` as float); a
    file in the old format (no ``organism`` / ``trained`` columns) is refused with a one-line error,
    and so is a file that differs from the checksum recorded when it was written
    (:func:`caft_tl.core.files.verify`) and the first row that does not fit the schema
    (:func:`check_csv_row`: column count, ``trained``, ``seed``, a number or ``nan`` as ``value``)."""
    files.verify(path)
    _check_header(path)
    table = {c: [] for c in COLUMNS}
    for line, row in csv_rows(path):
        for c, v in zip(COLUMNS, check_csv_row(row, f"{path}:{line}: ")):
            table[c].append(v)
    df = pd.DataFrame(table, columns=list(COLUMNS))
    return df.astype({"seed": int, "value": float, "trained": bool})


def csv_rows(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of each data row (after the header); bad UTF-8 or CSV is one line
    naming the file."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            next(reader, None)
            start = reader.line_num + 1
            for row in reader:
                if row:
                    yield start, row
                start = reader.line_num + 1
    except UnicodeDecodeError as e:
        raise files.CorruptFileError(
            f"cannot read {str(path)!r}: not UTF-8 text (byte {e.start}); "
            "delete it and re-run the chapters that wrote it"
        ) from None
    except csv.Error as e:
        raise files.CorruptFileError(
            f"{path}:{reader.line_num}: not CSV ({e}); delete it and re-run the chapters that wrote it"
        ) from None


def check_csv_row(row: list[str], where: str) -> tuple:
    """One row of a results file as text → typed values, or a one-line ``ValueError`` (``where``:
    ``file:line: ``) naming what is wrong and what is expected."""
    if len(row) != len(COLUMNS):
        raise ValueError(f"{where}{len(row)} fields, expected {len(COLUMNS)} ({', '.join(COLUMNS)})")
    values = dict(zip(COLUMNS, row))
    if values["trained"] not in ("True", "False"):
        raise ValueError(f"{where}trained = {values['trained']!r}; expected True or False")
    try:
        seed = int(values["seed"])
    except ValueError:
        raise ValueError(f"{where}seed = {values['seed']!r}; expected an integer") from None
    try:
        value = float(values["value"])
    except ValueError:
        raise ValueError(
            f"{where}value = {values['value']!r}; expected a number (or nan for an undefined one)"
        ) from None
    if math.isinf(value):
        raise ValueError(
            f"{where}value = {values['value']!r}; expected a finite number (or nan for an undefined one)"
        )
    return (*row[:5], values["trained"] == "True", seed, row[7], row[8], value)


def _check_header(path: str | os.PathLike) -> None:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
    except (UnicodeDecodeError, csv.Error):
        raise files.CorruptFileError(
            f"cannot read {str(path)!r}: its header is not UTF-8 CSV; "
            "delete it and re-run the chapters that wrote it"
        ) from None
    if tuple(header) != COLUMNS:
        missing = [c for c in COLUMNS if c not in header]
        raise OldResultsFormatError(
            f"{str(path)!r} has columns {header}, not {list(COLUMNS)} (missing {missing}): it was written by "
            "an older "
            "caft-tl; delete it and re-run the chapters (make run) to regenerate it"
        )


def write(path: str | os.PathLike, table: pd.DataFrame) -> None:
    """Write a whole table (e.g. every task's rows gathered), atomically, after checking its columns."""
    if tuple(table.columns) != COLUMNS:
        raise ValueError(f"table has columns {list(table.columns)}; expected {list(COLUMNS)}")
    # an undefined value as nan, as :func:`append` writes it (:func:`read` refuses an empty one)
    with atomic_write(path) as f:
        table.to_csv(f, index=False, lineterminator="\n", na_rep="nan")


def select(table: pd.DataFrame, **filters: Any) -> pd.DataFrame:
    """The rows whose columns equal the given values (a list or tuple value: any of them),
    e.g. ``select(df, method="zero", trained=False, split=["id", "ood"])``."""
    unknown = [c for c in filters if c not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown results column(s) {unknown}; valid: {', '.join(COLUMNS)}")
    keep = pd.Series(True, index=table.index)
    for col, value in filters.items():
        keep &= table[col].isin(value) if isinstance(value, (list, tuple, set)) else table[col] == value
    return table[keep]


def comparison(table: pd.DataFrame, metrics: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """The rows a method comparison summarises: the untrained base model (``base`` / ``none``) and
    every fine-tune, on ``metrics`` — not the base-model checks of chapter 04."""
    t = select(table, metric=list(metrics))
    return t[t["trained"] | ((t["method"] == "base") & (t["directions"] == "none"))]


#: which chapter writes rows of a method, untrained (False) or trained (True); modes: 04 / 05
_WRITERS = {
    ("base", False): "01_plain_finetune",
    ("plain", True): "01_plain_finetune",
    ("fewer_examples", True): "01_plain_finetune",
    ("kl_to_base", True): "01_plain_finetune",
    ("mix_disambiguating", True): "01_plain_finetune",
    ("interpretation", False): "03_interpret_directions",
}


def writer_chapter(method: str, trained: bool) -> str:
    """The chapter that writes rows of ``method`` (an intervention mode: chapter 04 untrained, 05 trained)."""
    return _WRITERS.get((method, trained), "05_caft" if trained else "04_base_model_checks")


def require(table: pd.DataFrame, **filters: Any) -> pd.DataFrame:
    """:func:`select`, raising :class:`MissingRowsError` naming the chapter to run when nothing matches
    (``method`` and ``trained`` must be among the filters)."""
    out = select(table, **filters)
    if out.empty:
        what = ", ".join(f"{k}={v!r}" for k, v in filters.items())
        known = isinstance(filters.get("method"), str) and isinstance(filters.get("trained"), bool)
        chapter = (
            writer_chapter(filters["method"], filters["trained"]) if known else "the chapters that write them"
        )
        raise MissingRowsError(f"no results rows with {what}: run {chapter} first (same run_dir)")
    return out
