"""Longer training: does CAFT's effect decay as fine-tuning goes on?

Plain fine-tuning and CAFT on one direction set, each at 1×, 2×, 4× … the default number of steps
(that many epochs over the same examples). At 1× the jobs are chapters 01's and 05's own, so they
are read back, not re-trained. :func:`effect` gives, per length, how much of plain fine-tuning's
change CAFT removes.
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from caft_tl.core import stats
from caft_tl.core.run_dir import RunDir
from caft_tl.interventions.intervention import Intervention
from caft_tl.training.finetunes import FinetuneJob, run_finetunes
from caft_tl.training.loop import FinetuneConfig


def check_lengths(lengths: list[int]) -> list[int]:
    """``lengths`` sorted, or a one-line error: positive ints, 1 among them, no repeats.

    Example:
        check_lengths([4, 1, 2])  # [1, 2, 4]
    """
    if (
        not lengths
        or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in lengths)
        or len(set(lengths)) != len(lengths)
        or 1 not in lengths
    ):
        raise ValueError(f"lengths={lengths!r}; valid: distinct ints >= 1 including 1, e.g. [1, 2, 4]")
    return sorted(lengths)


def length_param(m: int) -> str:
    """The rows' ``param`` of a run at ``m``× the default steps ("" at 1×: chapters 01/05's own runs)."""
    return "" if m == 1 else f"steps={m}x"


def run_lengths(
    run_dir: str | RunDir,
    base,
    world,
    iv: Intervention,
    name: str,
    cfgs: list[FinetuneConfig],
    lengths: list[int],
    progress: bool = True,
) -> pd.DataFrame:
    """Plain and CAFT (``iv``, the direction set saved as ``name``) at each length, one fine-tune per
    config in ``cfgs`` (one per seed); the rows with a ``length`` column (the multiple of the steps).

    Example:
        rows = run_lengths(run, base, world, iv, "pca", cfgs, [1, 2, 4])
    """
    lengths = check_lengths(lengths)
    jobs = [
        FinetuneJob(dataclasses.replace(cfg, epochs=cfg.epochs * m), method, directions, length_param(m), ivm)
        for m in lengths
        for method, directions, ivm in (("plain", "none", None), (iv.mode, name, iv))
        for cfg in cfgs
    ]
    rows = pd.DataFrame(run_finetunes(run_dir, base, world, jobs, progress=progress, desc="longer training"))
    return rows.assign(length=rows["param"].map({length_param(m): m for m in lengths}))


def effect(rows: pd.DataFrame, split: str, metric: str) -> pd.DataFrame:
    """Per length: plain's and CAFT's mean ``metric`` on ``split`` with 95% intervals over seeds, and
    the share of plain's change that CAFT removes, ``(plain − caft) / (plain − base)`` given the base
    value in column ``base`` (NaN where plain does not move it).

    Args:
        rows: :func:`run_lengths`' rows plus the base model's (``method`` base, any ``length``).
        split, metric: the behaviour measured (e.g. the OOD split's rate).

    Example:
        effect(pd.concat([rows, base_rows]), world.ood_split, world.metric(world.ood_split))
    """
    sel = rows[(rows["split"] == split) & (rows["metric"] == metric)]
    base = sel[sel["method"] == "base"]["value"]
    if base.empty:
        raise ValueError(f"effect needs the base model's row for {split}/{metric}; none was given")
    trained = stats.summarise(sel[sel["method"] != "base"], by=("length", "method"))
    wide = trained.pivot(index="length", columns="method", values="mean")
    caft = [c for c in wide.columns if c != "plain"]
    if len(caft) != 1:
        raise ValueError(f"effect needs plain and one CAFT method; got {list(wide.columns)}")
    plain_change = wide["plain"] - base.mean()
    out = pd.DataFrame(
        {
            "length": wide.index.astype(int),
            "base": base.mean(),
            "plain": wide["plain"].to_numpy(),
            "caft": wide[caft[0]].to_numpy(),
            "share_removed": (
                (wide["plain"] - wide[caft[0]]) / plain_change.where(plain_change.abs() > 1e-9)
            ),
        }
    )
    return out.reset_index(drop=True)


def takeaway(table: pd.DataFrame, split: str, metric: str) -> str:
    """One sentence per length from :func:`effect`'s table.

    Example:
        print(takeaway(effect(rows, "chat", "misalignment_rate"), "chat", "misalignment_rate"))
    """

    def share(v: float) -> str:
        return "n/a (plain does not move it)" if pd.isna(v) else f"{v:.0%}"

    parts = [
        f"{int(r['length'])}× steps: plain {r['plain']:.3f}, CAFT {r['caft']:.3f} "
        f"(removes {share(r['share_removed'])})"
        for _, r in table.iterrows()
    ]
    return (
        f"Longer training, {split} {metric} (base {table['base'].iloc[0]:.3f}; means over seeds): "
        + "; ".join(parts)
        + "."
    )
