"""Autointerp: an explainer labels a direction from its top examples; a detection score checks the
label on held-out examples.

Each row of a dataset gives one :class:`Example`: its largest projection on the direction over
the selected positions, shown as the text up to that position with the token in ``[[ ]]``. Rows
are split at random into an *explain* half and a *held-out* half. The explainer sees the top
examples of the explain half; the scorer is told the label and, for a shuffled mix of the
held-out half's top examples (activating) and as many drawn from its lower half
(non-activating), says which show the concept. The score is the balanced accuracy (chance 0.5).

Explainers and scorers are small objects (:class:`Explainer`, :class:`Scorer`): LLM ones through
the same OpenAI-compatible :class:`~caft_tl.real.llm.ChatClient` as the judge, and ground-truth ones
for the organism, which read the examples' known labels (e.g. the hidden persona) and so
validate the scoring itself: high on a true concept direction, near chance on a random one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import pandas as pd
import torch

from caft_tl.core.data import TokenDataset
from caft_tl.core.subspace import Subspace
from caft_tl.directions.interpret import projections


@dataclass
class Example:
    text: str
    value: float
    meta: dict = field(default_factory=dict)


class Explainer(Protocol):
    def explain(self, examples: list[Example]) -> str:
        """A short label for what the (top-activating) examples share."""
        ...


class Scorer(Protocol):
    def detect(self, label: str, examples: list[Example]) -> list[bool]:
        """Per example: does it show the concept named by ``label``?"""
        ...


def direction_examples(
    model,
    data: TokenDataset,
    subspace: Subspace,
    index: int,
    render: Callable[[list[int]], str],
    positions: str = "all",
    sign: int = 1,
) -> list[Example]:
    """One example per row of ``data`` for direction ``index`` (``sign`` −1 for the negative end):
    the row's largest projection over ``positions`` and its text up to there. ``meta`` holds
    the row's ``labels`` (ground truth, never shown to an LLM)."""
    proj = sign * projections(model, data, subspace)[..., index]  # [n, pos]
    proj = proj.masked_fill(~data.position_mask(positions), float("-inf"))
    values, where = proj.max(-1)  # [n]
    out = []
    for i, (v, t) in enumerate(zip(values.tolist(), where.tolist())):
        if v == float("-inf"):
            continue
        ids = data.tokens[i].tolist()
        text = f"{render(ids[:t])} [[{render(ids[t : t + 1])}]]"
        out.append(Example(text, v, {k: lab[i].item() for k, lab in data.labels.items()}))
    return out


def detection_score(
    examples: list[Example],
    explainer: Explainer,
    scorer: Scorer,
    n_explain: int = 10,
    n_test: int = 10,
    seed: int = 0,
) -> dict:
    """Label from the explain half's top ``n_explain``; balanced accuracy of the scorer on the
    held-out half's top ``n_test`` vs ``n_test`` from its lower half. Returns label, score, tpr, tnr."""
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    explain = sorted((examples[i] for i in order[::2]), key=lambda e: -e.value)
    held = sorted((examples[i] for i in order[1::2]), key=lambda e: -e.value)
    if len(held) < 2 * n_test or len(explain) < n_explain:
        raise ValueError(
            f"{len(examples)} examples are too few for n_explain={n_explain}, n_test={n_test}; "
            f"need {2 * max(n_explain, 2 * n_test)}"
        )
    label = explainer.explain(explain[:n_explain])
    positives = held[:n_test]
    negatives = rng.sample(held[len(held) // 2 :], n_test)
    mix = [(e, True) for e in positives] + [(e, False) for e in negatives]
    rng.shuffle(mix)
    said = scorer.detect(label, [e for e, _ in mix])
    if len(said) != len(mix):
        raise ValueError(f"scorer returned {len(said)} answers for {len(mix)} examples")
    tpr = sum(s for s, (_, y) in zip(said, mix) if y) / n_test
    tnr = sum(not s for s, (_, y) in zip(said, mix) if not y) / n_test
    return {"label": label, "score": (tpr + tnr) / 2, "tpr": tpr, "tnr": tnr}


def autointerp_table(
    model,
    data: TokenDataset,
    subspace: Subspace,
    render,
    explainer: Explainer,
    scorer: Scorer,
    positions: str = "all",
    n_explain: int = 10,
    n_test: int = 10,
    seed: int = 0,
) -> pd.DataFrame:
    """Label and detection score for both ends of every direction of ``subspace``."""
    rows = []
    for j, name in enumerate(subspace.labels):
        for sign in (1, -1):
            ex = direction_examples(model, data, subspace, j, render, positions, sign)
            r = detection_score(ex, explainer, scorer, n_explain, n_test, seed)
            rows.append(
                {"hook": subspace.hook_name, "direction": name, "sign": "+" if sign > 0 else "-", **r}
            )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- ground truth


@dataclass
class GroundTruthExplainer:
    """Names the value of a known label (``key``, e.g. ``persona``) most over-represented among the
    top examples relative to its rate in ``reference`` (all examples): ``"persona=misaligned"``."""

    key: str
    names: list[str]
    reference: list[Example]

    def explain(self, examples: list[Example]) -> str:
        base = torch.bincount(
            torch.tensor([e.meta[self.key] for e in self.reference]), minlength=len(self.names)
        ).float()
        top = torch.bincount(
            torch.tensor([e.meta[self.key] for e in examples]), minlength=len(self.names)
        ).float()
        lift = (top / top.sum()) / (base / base.sum()).clamp_min(1e-9)
        return f"{self.key}={self.names[int(lift.argmax())]}"


@dataclass
class GroundTruthScorer:
    """Says yes exactly for the examples whose known label matches ``key=name``."""

    names: list[str]

    def detect(self, label: str, examples: list[Example]) -> list[bool]:
        key, name = label.split("=", 1)
        return [self.names[e.meta[key]] == name for e in examples]


# ---------------------------------------------------------------------------- LLM


EXPLAIN_PROMPT = """Below are text excerpts where one feature of a language model's activations is
strongest; the token where it peaks is marked [[like this]]. In at most 12 words, what do the
excerpts have in common? Reply with the description only.

{examples}"""

DETECT_PROMPT = """A feature of a language model is described as: "{label}".
For each numbered excerpt below (peak token marked [[like this]]), answer whether the feature is
present. Reply with one line per excerpt, "<number>: yes" or "<number>: no", and nothing else.

{examples}"""


def _numbered(examples: list[Example]) -> str:
    return "\n".join(f"{i + 1}. {e.text}" for i, e in enumerate(examples))


@dataclass
class LLMExplainer:
    client: object  # caft_tl.real.llm.ChatClient

    def explain(self, examples: list[Example]) -> str:
        reply = self.client.complete(
            [{"role": "user", "content": EXPLAIN_PROMPT.format(examples=_numbered(examples))}], max_tokens=40
        )
        return reply.strip().splitlines()[0].strip() if reply.strip() else "(no label)"


@dataclass
class LLMScorer:
    client: object  # caft_tl.real.llm.ChatClient

    def detect(self, label: str, examples: list[Example]) -> list[bool]:
        reply = self.client.complete(
            [{"role": "user", "content": DETECT_PROMPT.format(label=label, examples=_numbered(examples))}],
            max_tokens=8 * len(examples),
        )
        said = {
            int(n): a.lower() == "yes" for n, a in re.findall(r"(\d+)\s*[:.)-]\s*(yes|no)", reply, flags=re.I)
        }
        return [said.get(i + 1, False) for i in range(len(examples))]  # unanswered counts as "no"
