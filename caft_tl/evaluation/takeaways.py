"""Chapter takeaways generated from the rows of the task at hand, so the text follows the numbers
(and the task: no chat misalignment in a ``double_mc`` chapter)."""

from __future__ import annotations

import pandas as pd

from caft_tl.core import stats
from caft_tl.directions.sets import is_null


def _fmt(x: float) -> str:
    return "–" if pd.isna(x) else f"{x:.2f}"


def plain(task, summary: pd.DataFrame) -> str:
    """Chapter 01: what plain fine-tuning did to the task's own splits (means and 95% intervals over
    fine-tuning seeds), and whether it moved the generalisation away from the base model."""
    ood, idd = task.ood_split, task.id_split

    def get(method: str, split: str):
        r = summary[
            (summary["method"] == method)
            & (summary["split"] == split)
            & (summary["metric"] == task.metric(split))
        ]
        return r.iloc[0] if len(r) else None

    base_ood, plain_ood, plain_id = get("base", ood), get("plain", ood), get("plain", idd)
    if base_ood is None or plain_ood is None or plain_id is None:
        return "No base or plain rows on this task's splits: run this chapter's fine-tunes first."
    moved = (
        "above"
        if plain_ood["low"] > base_ood["mean"]
        else "below"
        if plain_ood["high"] < base_ood["mean"]
        else "not measurably away from"
    )
    return (
        f"On `{task.name}`, plain fine-tuning reached {task.metric(idd)} {_fmt(plain_id['mean'])} "
        f"on `{idd}` (the task, unseen prompts) and "
        f"{task.metric(ood)} {_fmt(plain_ood['mean'])} "
        f"[{_fmt(plain_ood['low'])}, {_fmt(plain_ood['high'])}] on `{ood}` "
        f"(its generalisation), {moved} the base model's {_fmt(base_ood['mean'])}. "
        "That shift, not the task, is what CAFT should "
        "change; learning less (the fewer-examples curve) also moves it, so CAFT (chapter 05) "
        "must beat that curve."
    )


def interpretation(task, choice: dict, readout: pd.DataFrame, score: pd.DataFrame, what: str = "PCs") -> str:
    """Chapter 03: what the interpreter chose from allowed information, and its scores against the
    oracle (``score``: :func:`caft_tl.directions.oracle.score_choice` tables by set name, ``all`` rows)."""
    chosen = {h: c for h, c in choice["chosen"].items() if c}
    n = sum(map(len, chosen.values()))
    concept = readout[readout["label"].isin(task.concept_groups)] if len(readout) else readout
    lines = [
        f"The interpreter read {len(readout)} ends of {what} (top examples, logit lens) "
        "with the lexicon only; "
        f"{len(concept)} were labelled as the unwanted concept ({task.concept_description}: "
        f"{', '.join(task.concept_groups)})."
    ]
    if choice.get("fallback"):
        lines.append(
            f"None passed the rule, so the set falls back to the single best concept reading "
            f"({'; '.join(f'{h}: {c}' for h, c in chosen.items())}): treat its CAFT rows as a weak baseline."
        )
    elif n:
        lines.append(f"The rule kept {n} of them: " + "; ".join(f"{h} {c}" for h, c in chosen.items()) + ".")
    parts = []
    for name, df in score.items():
        row = df.set_index("hook").loc["all"]
        parts.append(
            f"`{name}` precision {_fmt(row['precision'])}, recall {_fmt(row['recall'])}, "
            f"oracle span {_fmt(row['oracle_span'])}"
        )
    lines.append("Against the ground truth (the oracle, used here only to score): " + "; ".join(parts) + ".")
    return " ".join(lines)


def caft(task, summary: pd.DataFrame, table: pd.DataFrame | None = None) -> str:
    """Chapter 05: CAFT with the interpreted set against plain fine-tuning, the baselines and the
    null distribution, on the task's own splits and metric (``table``: the run's rows, for the null)."""
    ood, idd = task.ood_split, task.id_split
    m_ood, m_id = task.metric(ood), task.metric(idd)
    s = summary[summary["trained"] | (summary["method"] == "base")] if "trained" in summary else summary

    def mean(method, directions, split, metric):
        r = s[
            (s["method"] == method)
            & (s["directions"] == directions)
            & (s["param"] == "")
            & (s["split"] == split)
            & (s["metric"] == metric)
        ]
        return r["mean"].iloc[0] if len(r) else float("nan")

    lines = [
        f"`{ood}` ({m_ood}) is the generalisation CAFT should change, "
        f"`{idd}` ({m_id}) the task it should keep. "
        f"Base {_fmt(mean('base', 'none', ood, m_ood))} / {_fmt(mean('base', 'none', idd, m_id))}, "
        f"plain fine-tuning {_fmt(mean('plain', 'none', ood, m_ood))} / "
        f"{_fmt(mean('plain', 'none', idd, m_id))} ({ood} / {idd})."
    ]
    sets = [
        d
        for d in (
            "pca",
            "topk_pca",
            "noninterp_pca",
            "random",
            "oracle",
            "oracle_pca",
            "sae",
            "topk_sae",
            "random_sae",
        )
        if not pd.isna(mean("zero", d, ood, m_ood))
    ]
    lines.append(
        "CAFT (zero): "
        + "; ".join(
            f"`{d}` {_fmt(mean('zero', d, ood, m_ood))} / {_fmt(mean('zero', d, idd, m_id))}" for d in sets
        )
        + "."
    )
    if table is not None:
        null = null_values(table, ood, m_ood)
        if len(null) and "pca" in sets:
            better_high = mean("base", "none", ood, m_ood) > mean("plain", "none", ood, m_ood)
            pct = stats.null_percentile(mean("zero", "pca", ood, m_ood), null, higher_is_better=better_high)
            lines.append(
                f"Against {len(null)} random subspaces of the same hooks and ranks (one seed each; null "
                f"{min(null):.2f}–{max(null):.2f}), `pca` beats {pct:.0f}% of the draws on {ood}."
            )
    if m_ood == "misalignment_rate":
        red = stats.reduction_factor(s, ood, m_ood).set_index(["method", "directions", "param"])[
            "reduction_factor"
        ]
        if ("zero", "pca", "") in red.index:
            lines.append(
                f"Excess misalignment over base, plain ÷ CAFT: {_fmt(red.loc[('zero', 'pca', '')])}× (`pca`)."
            )
    return " ".join(lines)


def null_values(table: pd.DataFrame, split: str, metric: str) -> list[float]:
    """The null distribution's values (one per draw, mean over its rows) of ``metric`` on ``split``."""
    t = table[
        (table["method"] == "zero")
        & table["trained"]
        & (table["split"] == split)
        & (table["metric"] == metric)
    ]
    t = t[t["directions"].map(is_null)]
    return t.groupby("directions")["value"].mean().tolist()


def leakage(table: pd.DataFrame, readout: str, target: str = "") -> str:
    """Chapter 09: per direction set, the share of the CAFT model's change that sits inside the ablated
    subspace (beside the plain fine-tune's), and on the ``target`` concept at the ``readout`` hook (the
    stream the unembedding reads) the CAFT model's shift beside the plain one's
    (``table``: :func:`caft_tl.evaluation.leakage.leakage_table`)."""
    lines = []
    for name, t in table.groupby("directions", sort=False):
        ablated = t[t["ablated"]].groupby("method")["energy_in_subspace"].mean()
        hooks = t.loc[t["ablated"], "hook"].unique()
        lines.append(
            f"`{name}` (ablated at {', '.join(f'`{h}`' for h in hooks)}): the CAFT model puts "
            f"{_fmt(ablated.get('zero'))} of its change's energy inside the ablated subspace, the plain "
            f"fine-tune {_fmt(ablated.get('plain'))} (mean over the ablated hooks); what CAFT leaves there "
            "flows at evaluation, where the hook is off."
        )
        at = t[(t["hook"] == readout) & (t["concept"] == target)].set_index("method")
        if target and {"plain", "zero"} <= set(at.index):
            lines.append(
                f"Along the ground-truth `{target}` direction at `{readout}`, the plain fine-tune moved "
                f"{_fmt(at.loc['plain', 'concept_shift'])} and the CAFT model "
                f"{_fmt(at.loc['zero', 'concept_shift'])}: a recovered share of "
                f"{_fmt(at.loc['zero', 'recovered_share'])} (0: CAFT kept the concept out of the stream the "
                "unembedding reads; 1: it routed all of it around the ablation)."
            )
    return " ".join(lines) if lines else "No CAFT model was diffed: run 05_caft first."
