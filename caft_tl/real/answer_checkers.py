"""Answer checkers: offline rules that read a model's free answer and name what is wrong with it, by
name in a registry (duplicates raise). A card's ``checker`` (:mod:`caft_tl.real.card`) names one; its
``id`` split is then also scored by greedy answers (:func:`score`): they are written to
``samples/<label>_id_<checker>.csv`` with the reasons each was flagged, and the metric
:data:`FLAGGED` is the share flagged.

- ``insecure_code``: :func:`caft_tl.real.code_checker.flags` (one rule per vulnerability class).

Coherence of these answers is not measured yet: the only coherence in the code is the LLM judge's
(:class:`caft_tl.real.llm.LLMJudge`, needs an API key), which reads the ``judge`` kind's answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from caft_tl.core import files
from caft_tl.real import chat_eval, code_checker
from caft_tl.real.metric_kinds import DEFAULT_SCORING, Scoring

#: the metric row of a checked split: share of greedy answers the checker flags
FLAGGED = "checker_flagged"


@dataclass(frozen=True)
class AnswerChecker:
    """``reasons(answer)``: why the answer is flagged (e.g. vulnerability classes), empty when it is not."""

    name: str
    reasons: Callable[[str], list[str]]
    description: str


@dataclass(frozen=True)
class CheckerUse:
    """A card's ``checker``: which checker reads the ``id`` split's greedy answers, and their length in
    new tokens (0: the run's :attr:`Scoring.max_new_tokens`)."""

    name: str
    max_new_tokens: int = 0


#: answer checkers by name (:func:`register`)
CHECKERS: dict[str, AnswerChecker] = {}


def register(checker: AnswerChecker) -> AnswerChecker:
    """Add a checker to :data:`CHECKERS`; a second checker of the same name is an error."""
    if checker.name in CHECKERS:
        raise ValueError(f"answer checker {checker.name!r} is already registered")
    CHECKERS[checker.name] = checker
    return checker


def get(name: str) -> AnswerChecker:
    if name not in CHECKERS:
        raise ValueError(f"unknown answer checker {name!r}; valid: {', '.join(CHECKERS)}")
    return CHECKERS[name]


def flagged_share(checker: AnswerChecker, answers: list[str]) -> float:
    """The share of ``answers`` that ``checker`` flags (an empty answer is not flagged).

    Args:
        checker: a registered :class:`AnswerChecker`.
        answers: the answers' texts, at least one.

    Returns:
        A share in [0, 1].

    Example:
        >>> flagged_share(get("insecure_code"), ["eval(input())", "print(1 + 1)"])
        0.5
    """
    if isinstance(answers, str) or not answers:
        raise ValueError(f"flagged_share needs a non-empty list of answers, got {answers!r:.60}")
    return sum(bool(checker.reasons(a)) for a in answers) / len(answers)


def score(
    model,
    tokenizer,
    rows: list[dict],
    split: str,
    use: CheckerUse,
    fwd_hooks=(),
    scoring: Scoring = DEFAULT_SCORING,
) -> dict[str, float]:
    """Greedy answers to ``rows`` with ``fwd_hooks`` active (one left-padded batch without hooks on a
    bridge: :func:`caft_tl.real.chat_eval.sample_chat`), read by the checker ``use.name``.

    Args:
        model, tokenizer: the model (a bridge, or :class:`caft_tl.real.lora.AdaptersOff`) and its tokenizer.
        rows: prompt rows (``messages`` ending with a user turn, or ``prompt``).
        split: the split's name, in the samples file's name.
        use: the card's checker and answer length.
        fwd_hooks: hooks active while generating (e.g. ``intervention.fwd_hooks()``).
        scoring: ``label`` and ``out_dir``: the answers go to
            ``out_dir/samples/<label>_<split>_<checker>.csv`` (columns of ``sample_chat``, ``flags``,
            ``flagged``); ``max_new_tokens`` when ``use`` gives none.

    Returns:
        ``{FLAGGED: share of answers flagged}``.
    """
    checker = get(use.name)
    n_tokens = use.max_new_tokens or scoring.max_new_tokens
    samples = chat_eval.sample_chat(model, tokenizer, rows, 1, n_tokens, temperature=0.0, fwd_hooks=fwd_hooks)
    reasons = [checker.reasons(a) for a in samples["answer"]]
    samples["flags"] = [";".join(r) for r in reasons]
    samples["flagged"] = [bool(r) for r in reasons]
    if scoring.out_dir is not None:
        path = Path(scoring.out_dir) / "samples" / f"{scoring.label}_{split}_{checker.name}.csv"
        files.write_csv(path, samples)
    return {FLAGGED: flagged_share(checker, list(samples["answer"]))}


register(
    AnswerChecker(
        "insecure_code",
        code_checker.flags,
        "Python answers: one rule per vulnerability class of caft_tl.real.insecure_code",
    )
)
