"""The ground-truth oracle: the upper bound and the scorer of an interpretation, never its input.

On an organism the task knows its concept directions (``Task.concept_directions``). A direction
*is* the unwanted concept when its |cos| with the ``target`` concept is at least ``threshold``
and larger than its |cos| with the ``avoid`` concept (the concept the fine-tune should keep):
:func:`is_concept` (chapter 03's old choice rule, now used to score and to build the ``oracle_pca``
set only). :func:`score_choice` scores a choice
of directions against it, per hook: precision and recall of the chosen directions among the
candidates, and how much of the oracle concept direction the chosen subspace spans
(``oracle_span`` = ‖P_chosen q_oracle‖², 0 with nothing chosen, 1 when it holds q).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from caft_tl.core import results
from caft_tl.core.subspace import Subspace

#: the metrics of :func:`score_rows` (method ``interpretation``, trained False)
SCORE_METRICS = ("precision", "recall", "oracle_span", "n_chosen", "n_true")


def is_concept(
    scores: pd.DataFrame, target: str, avoid: str | None = None, threshold: float = 0.2
) -> pd.Series:
    """Rows of a concept-score table (:func:`caft_tl.directions.interpret.concept_scores`) whose
    direction reads the ``target`` concept (|cos| ≥ ``threshold``, and more than ``avoid``)."""
    for col in [target] + ([avoid] if avoid else []):
        if col not in scores:
            raise ValueError(
                f"unknown concept {col!r}; "
                f"valid: {', '.join(c for c in scores if c not in ('hook', 'direction', 'index'))}"
            )
    keep = scores[target] >= threshold
    if avoid:
        keep &= scores[target] > scores[avoid]
    return keep


def chosen_by_hook(
    scores: pd.DataFrame, target: str, avoid: str | None = None, threshold: float = 0.2
) -> dict[str, list[int]]:
    """The indices :func:`is_concept` keeps, per hook of a concept-score table (the oracle's choice)."""
    keep = is_concept(scores, target, avoid, threshold)
    return {
        h: scores.loc[keep & (scores["hook"] == h), "index"].astype(int).tolist()
        for h in dict.fromkeys(scores["hook"])
    }


def oracle_span(chosen: Subspace | None, concept: Subspace) -> float:
    """‖P_chosen q‖² for the concept's (first) unit direction q; 0 when nothing is chosen."""
    if chosen is None:
        return 0.0
    if chosen.hook_name != concept.hook_name:
        raise ValueError(f"chosen subspace at {chosen.hook_name!r}, concept at {concept.hook_name!r}")
    q = concept.basis[:, 0].double()
    return float(((chosen.basis.double().T @ q) ** 2).sum() / (q @ q))


def score_choice(
    scores: pd.DataFrame,
    chosen: dict[str, list[int]],
    subspaces: dict[str, Subspace | None],
    concepts: dict[str, Subspace],
    target: str,
    avoid: str | None = None,
    threshold: float = 0.2,
) -> pd.DataFrame:
    """Per hook of ``scores`` (the candidates' concept scores; ``index`` the candidate's id) and
    pooled (``hook`` = ``all``): n_chosen, n_true (candidates that are the concept), precision
    (NaN with nothing chosen), recall (NaN with no true candidate), oracle_span (the chosen
    ``subspaces[hook]`` against ``concepts[hook]``; pooled: the mean over hooks)."""
    truth = is_concept(scores, target, avoid, threshold)
    rows = []
    for hook in dict.fromkeys(scores["hook"]):
        at = scores["hook"] == hook
        true = set(scores.loc[at & truth, "index"].astype(int))
        pick = set(chosen.get(hook, []))
        rows.append(
            {
                "hook": hook,
                "n_chosen": len(pick),
                "n_true": len(true),
                "n_hit": len(pick & true),
                "oracle_span": oracle_span(subspaces.get(hook), concepts[hook]),
            }
        )
    df = pd.DataFrame(rows)
    pooled = {
        "hook": "all",
        **df[["n_chosen", "n_true", "n_hit"]].sum().to_dict(),
        "oracle_span": df["oracle_span"].mean(),
    }
    df = pd.concat([df, pd.DataFrame([pooled])], ignore_index=True)
    df["precision"] = np.where(df["n_chosen"] > 0, df["n_hit"] / df["n_chosen"].clip(lower=1), np.nan)
    df["recall"] = np.where(df["n_true"] > 0, df["n_hit"] / df["n_true"].clip(lower=1), np.nan)
    return df


def score_rows(
    score: pd.DataFrame, task: str, organism: str, directions: str, extra: dict[str, float] | None = None
) -> list[dict]:
    """Results rows of a :func:`score_choice` table: method ``interpretation``, trained False,
    ``split`` the hook (or ``all``), metrics :data:`SCORE_METRICS` (NaN ones left out); ``extra``
    metrics go on the ``all`` split (e.g. ``fallback``)."""
    key = results.RowKey(task, organism, "interpretation", directions, trained=False)
    metrics = {
        r["hook"]: {m: float(r[m]) for m in SCORE_METRICS if not pd.isna(r[m])}
        for r in score.to_dict("records")
    }
    metrics.setdefault("all", {}).update(extra or {})
    return results.rows(key, metrics)
