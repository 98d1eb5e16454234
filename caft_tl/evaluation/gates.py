"""Validity gates of a spurious-correlation organism (``double_mc``, ``pronoun_profession``), read
from results rows, and the CAFT outcomes reported beside them.

The gates say whether an organism is a fair testbed; they are fixed here (:class:`GateThresholds`)
before any CAFT result is seen and read no CAFT outcome:

- **V1** the base model answers single questions of each topic, with no strong preference under
  ``ANS_D`` (OOD accuracy inside 0.3–0.7 in both question orders; the design's ``lean`` puts it near
  0.5 − lean) — chapter 01's ``base`` rows;
- **V2** plain fine-tuning reaches high ID accuracy and low OOD accuracy in *both* question orders
  on all but at most one fine-tuning seed (it read the spurious topic; a positional shortcut would
  leave one order high) — chapter 01's ``plain`` rows;
- **V3** the oracle subspace of the spurious concept, zero-ablated on the *untrained* base model,
  removes the spurious skill and keeps the intended one — chapter 04's untrained ``oracle`` rows.

An organism that fails a gate is reported and left out of the CAFT comparison, never replaced.
:func:`outcomes` are *results* (does oracle CAFT raise OOD accuracy; do the chosen PCs beat the
top-k and random ones), reported over the valid organisms, not gates.
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
    """The numbers each gate compares with (accuracy on the intended topic, 0–1). Fixed before the
    populations were run (2026-12-02); changing them after seeing CAFT numbers would void the gates."""

    min_single: float = 0.9  # V1: single-question accuracy of each topic at least this
    no_preference: tuple[float, float] = (0.3, 0.7)  # V1: base OOD accuracy inside this band in each order
    min_plain_id: float = 0.95  # V2: plain fine-tuning learnt the task
    max_plain_ood: float = 0.25  # V2: plain OOD accuracy at most this, in each question order
    max_ablated_spurious: float = 0.6  # V3: the oracle ablation leaves the spurious skill near chance (0.5)
    min_ablated_intended: float = 0.8  # V3: and keeps the intended skill


#: the thresholds :func:`validity` compares with unless given others
DEFAULT_THRESHOLDS = GateThresholds()


def check_task(task) -> None:
    """Refuse a task without gates, naming the ones that have them."""
    if not task.has_gates:
        valid = [n for n, (cls, _) in TASKS.items() if cls.has_gates]
        raise ValueError(
            f"the gates need a spurious-correlation task; {task.name!r} is not one "
            f"(valid: {', '.join(valid)})"
        )


def _accuracy(table: pd.DataFrame | list[dict]):
    acc = results.select(pd.DataFrame(table) if isinstance(table, list) else table, metric="accuracy")

    def get(method: str, directions: str, trained: bool, split: str, required: bool = True) -> list[float]:
        find = results.require if required else results.select
        return find(acc, method=method, directions=directions, trained=trained, split=split)["value"].tolist()

    return get


def validity(
    table: pd.DataFrame | list[dict], thresholds: GateThresholds = DEFAULT_THRESHOLDS
) -> dict[str, dict]:
    """V1–V3, each with whether it holds and the numbers it rests on, and ``valid`` (all three);
    a missing row raises naming the chapter that writes it. Reads no fine-tune under an intervention."""
    get, t = _accuracy(table), thresholds
    base = {s: get("base", "none", False, s)[0] for s in BASE_SPLITS}
    lo, hi = t.no_preference
    v1 = min(base["single_intended"], base["single_spurious"]) >= t.min_single and all(
        lo <= base[s] <= hi for s in ("ood_intended_first", "ood_spurious_first")
    )
    plain = {s: get("plain", "none", True, s) for s in PLAIN_SPLITS}
    learnt = [
        i >= t.min_plain_id and a <= t.max_plain_ood and b <= t.max_plain_ood
        for i, a, b in zip(plain["id"], plain["ood_intended_first"], plain["ood_spurious_first"])
    ]
    ablated = {s: get("zero", "oracle", False, s)[0] for s in ("single_intended", "single_spurious")}
    v3 = (
        ablated["single_spurious"] <= t.max_ablated_spurious
        and ablated["single_intended"] >= t.min_ablated_intended
    )
    gates = {
        "V1_base": {"holds": v1, **base},
        "V2_plain_learns_spurious": {
            "holds": sum(learnt) >= max(1, len(learnt) - 1),
            "seeds": sum(learnt),
            "of": len(learnt),
            **plain,
        },
        "V3_oracle_removes_spurious": {"holds": v3, **ablated},
    }
    return {**gates, "valid": {"holds": all(g["holds"] for g in gates.values())}}


def outcomes(table: pd.DataFrame | list[dict]) -> dict[str, dict]:
    """CAFT results the gates are not: does oracle CAFT (evaluated without the hook) raise OOD
    accuracy over plain on every seed; do the rule-chosen PCs beat the top PCs and random ones."""
    get = _accuracy(table)
    caft_ood, plain_ood = get("zero", "oracle", True, "ood"), get("plain", "none", True, "ood")
    ood = {
        d: get("zero", d, True, "ood", required=False)
        for d in ("pca", "topk_pca", "random", "oracle", "oracle_pca")
    }
    return {
        "oracle_caft_raises_ood": {
            "holds": all(c > p for c, p in zip(caft_ood, plain_ood)),
            "caft_ood": caft_ood,
            "plain_ood": plain_ood,
        },
        "pca_beats_topk_and_random": {
            "holds": bool(ood["pca"]) and min(ood["pca"]) > max(ood["topk_pca"] + ood["random"], default=0.0),
            **{f"{d}_ood": v for d, v in ood.items()},
            "pca_id": get("zero", "pca", True, "id", required=False),
        },
    }


def takeaway(organism: str, validity: dict[str, dict], outcomes: dict[str, dict]) -> str:
    """One paragraph, generated from the verdicts: is the organism a fair test, and what CAFT did on it."""
    failed = [g for g, v in validity.items() if g != "valid" and not v["holds"]]
    head = (
        f"Organism {organism} is a valid test of CAFT (V1–V3 hold)."
        if not failed
        else f"Organism {organism} is not a valid test of CAFT ({', '.join(failed)} fail): "
        "it is reported, and left out of the CAFT comparison."
    )
    o1, o2 = outcomes["oracle_caft_raises_ood"], outcomes["pca_beats_topk_and_random"]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
    return (
        f"{head} Oracle CAFT {'raised' if o1['holds'] else 'did not raise'} OOD accuracy on every seed "
        f"(mean {mean(o1['caft_ood']):.2f} vs plain {mean(o1['plain_ood']):.2f}); the chosen PCs "
        f"{'beat' if o2['holds'] else 'did not beat'} the top PCs and random directions "
        f"(OOD {mean(o2['pca_ood']):.2f} vs {mean(o2['topk_pca_ood']):.2f} / {mean(o2['random_ood']):.2f})."
    )


def verdict_table(verdicts: dict[str, dict]) -> pd.DataFrame:
    """One row per gate: whether it holds and the numbers it rests on (2 decimals)."""

    def fmt(v):
        if isinstance(v, dict):
            return ", ".join(f"{k} {fmt(x)}" for k, x in v.items())
        if isinstance(v, list):
            return "/".join(fmt(x) for x in v) or "–"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    return pd.DataFrame(
        [
            {
                "gate": g,
                "holds": v["holds"],
                "numbers": "; ".join(f"{k}: {fmt(x)}" for k, x in v.items() if k != "holds"),
            }
            for g, v in verdicts.items()
        ]
    )
