"""The gates of a spurious-correlation organism (``double_mc``), read from results rows.

1. The base model answers single questions of each topic, with no preference under ``ANS_D``
   (OOD accuracy near 0.5 in both question orders).
2. Plain fine-tuning reaches high ID accuracy and low OOD accuracy in *both* question orders
   (it read the spurious topic; a positional shortcut would leave one order high).
3. The oracle subspace of the spurious concept, zero-ablated on the untrained base model, removes
   the spurious skill and keeps the intended one; CAFT with it (evaluated without the hook) raises
   OOD accuracy.
4. Directions from the diffs chosen by chapter 03's rule (``pca``) beat the top PCs of the same
   rank (``topk_pca``) and random directions of that rank (``random``), as CAFT.

:func:`verdicts` reads the rows chapters 01–05 write (chapter 07 shows them;
``caft_tl.runner.gate_search`` runs the same steps without notebooks). Every threshold is a field of
:class:`GateThresholds`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from caft_tl.core import results
from caft_tl.organism import TASKS

BASE_SPLITS = ("single_intended", "single_spurious", "ood_intended_first", "ood_spurious_first")
PLAIN_SPLITS = ("id", "ood_intended_first", "ood_spurious_first")


@dataclass(frozen=True)
class GateThresholds:
    """The numbers each gate compares with (accuracy on the intended topic, 0–1)."""

    min_single: float = 0.9  # gate 1: single-question accuracy of each topic at least this
    no_preference: tuple[float, float] = (0.3, 0.7)  # gate 1: base OOD accuracy inside this band in each order
    min_plain_id: float = 0.95  # gate 2: plain fine-tuning learnt the task
    max_plain_ood: float = 0.25  # gate 2: plain OOD accuracy at most this, in each question order
    max_ablated_spurious: float = 0.6  # gate 3: the oracle ablation leaves the spurious skill near chance (0.5)
    min_ablated_intended: float = 0.8  # gate 3: and keeps the intended skill


def check_task(task) -> None:
    """Refuse a task without gates, naming the ones that have them."""
    if not task.has_gates:
        valid = [n for n, (cls, _) in TASKS.items() if cls.has_gates]
        raise ValueError(f"the gates need a spurious-correlation task; {task.name!r} is not one (valid: {', '.join(valid)})")


def verdicts(table: pd.DataFrame | list[dict], thresholds: GateThresholds = GateThresholds()) -> dict[str, dict]:
    """Each gate's verdict and the numbers it rests on (accuracy per split); a missing row raises
    naming the chapter that writes it."""
    df = pd.DataFrame(table) if isinstance(table, list) else table
    acc = results.select(df, metric="accuracy")

    def get(method: str, directions: str, trained: bool, split: str, required: bool = True) -> list[float]:
        find = results.require if required else results.select
        return find(acc, method=method, directions=directions, trained=trained, split=split)["value"].tolist()

    t = thresholds
    base = {s: get("base", "none", False, s)[0] for s in BASE_SPLITS}
    lo, hi = t.no_preference
    gate1 = min(base["single_intended"], base["single_spurious"]) >= t.min_single and all(
        lo <= base[s] <= hi for s in ("ood_intended_first", "ood_spurious_first"))
    plain = {s: get("plain", "none", True, s) for s in PLAIN_SPLITS}
    learnt = [i >= t.min_plain_id and a <= t.max_plain_ood and b <= t.max_plain_ood
              for i, a, b in zip(plain["id"], plain["ood_intended_first"], plain["ood_spurious_first"])]
    ablated = {s: get("zero", "oracle", False, s)[0] for s in ("single_intended", "single_spurious")}
    caft_ood, plain_ood = get("zero", "oracle", True, "ood"), get("plain", "none", True, "ood")
    ood = {d: get("zero", d, True, "ood", required=False) for d in ("pca", "topk_pca", "random", "oracle")}
    return {
        "gate1_base": {"holds": gate1, **base},
        "gate2_plain_learns_spurious": {"holds": sum(learnt) >= max(1, len(learnt) - 1), "seeds": sum(learnt), "of": len(learnt), **plain},
        "gate3_oracle": {"holds": ablated["single_spurious"] <= t.max_ablated_spurious and ablated["single_intended"] >= t.min_ablated_intended
                         and all(c > p for c, p in zip(caft_ood, plain_ood)),
                         "untrained": ablated, "caft_ood": caft_ood, "plain_ood": plain_ood},
        "gate4_pca": {"holds": bool(ood["pca"]) and min(ood["pca"]) > max(ood["topk_pca"] + ood["random"], default=0.0),
                      **{f"{d}_ood": v for d, v in ood.items()}, "pca_id": get("zero", "pca", True, "id", required=False)},
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
