"""Behaviour rates through a ``Judge``: exact-probability and sampled variants."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Protocol

import torch

from caft_tl.core.data import TokenDataset

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from caft_tl.organism.task import Task

HIT, MISS, OTHER = 1, 0, -1
EVAL_MODES = ("exact", "sampled")


class Judge(Protocol):
    """Labels candidate answers: HIT (the behaviour the task's metric counts, ``task.metric(split)``:
    misaligned or insecure answers in ``persona_em``, the correct option in ``double_mc``), MISS
    (the judged alternative), OTHER (not judged)."""

    def label_answers(self, prompts: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        """prompts [n, pos], answers [n, m] → labels [n, m] in {HIT, MISS, OTHER}."""
        ...


def label_by_prompt(
    prompts: torch.Tensor,
    answers: torch.Tensor,
    families: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """The judge of a world where each prompt token has its own two answers: ``families`` holds
    (prompt tokens [k], HIT answers [k], MISS answers [k]) per kind of prompt, and the prompt is the
    last token. prompts [n, pos], answers [n, m] → [n, m]: HIT / MISS for *this* prompt's answers,
    OTHER for anything else (another prompt's answer, a non-answer token)."""
    last = prompts[:, -1]  # [n]
    hit_answer, miss_answer = torch.full_like(last, -1), torch.full_like(last, -1)
    for prompt_ids, hits, misses in families:
        match = last[:, None] == prompt_ids[None, :]  # [n, k]
        found, which = match.any(1), match.float().argmax(1)
        hit_answer = torch.where(found, hits[which], hit_answer)
        miss_answer = torch.where(found, misses[which], miss_answer)
    labels = torch.full_like(answers, OTHER)
    labels[answers == miss_answer[:, None]] = MISS
    labels[answers == hit_answer[:, None]] = HIT
    return labels


@torch.inference_mode()
def next_token_probs(
    model: HookedTransformer, prompts: TokenDataset, fwd_hooks=(), batch_size: int = 512
) -> torch.Tensor:
    """[n, d_vocab] probabilities of the token after each prompt."""
    from caft_tl.core.models import check_fwd_hooks

    fwd_hooks = check_fwd_hooks(model, fwd_hooks)
    out = []
    for batch in prompts.batches(batch_size):
        with model.hooks(fwd_hooks=list(fwd_hooks)):
            logits = model(batch.tokens.to(model.cfg.device))  # [b, pos, d_vocab]
        out.append(logits[:, -1].float().softmax(-1).cpu())
    return torch.cat(out)


def behaviour_rate(
    model: HookedTransformer,
    prompts: TokenDataset,
    judge: Judge,
    mode: str = "exact",
    n_samples: int = 64,
    seed: int = 0,
    fwd_hooks=(),
    candidate_labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-prompt rate of HIT answers among judged (HIT or MISS) answers (``candidate_labels``: the
    judge's ``[n, d_vocab]`` label of every token as each prompt's answer, if already made).

    ``exact``: P(HIT) / (P(HIT) + P(MISS)) from the next-token distribution.
    ``sampled``: the same ratio over ``n_samples`` sampled answers per prompt (NaN if none judged).
    Also returns ``coherence``: probability mass (or sample share) on HIT or MISS answers.
    """
    if mode not in EVAL_MODES:
        raise ValueError(f"unknown evaluation mode {mode!r}; valid: {', '.join(EVAL_MODES)}")
    probs = next_token_probs(model, prompts, fwd_hooks)  # [n, d_vocab]
    n, d_vocab = probs.shape
    if mode == "exact":
        labels = (
            candidate_labels
            if candidate_labels is not None
            else judge.label_answers(prompts.tokens, torch.arange(d_vocab).expand(n, d_vocab))
        )  # [n, d_vocab]
        p_hit = (probs * (labels == HIT)).sum(-1)
        p_miss = (probs * (labels == MISS)).sum(-1)
    else:
        gen = torch.Generator().manual_seed(seed)
        samples = torch.multinomial(probs, n_samples, replacement=True, generator=gen)  # [n, s]
        labels = judge.label_answers(prompts.tokens, samples)
        p_hit = (labels == HIT).float().mean(-1)
        p_miss = (labels == MISS).float().mean(-1)
    return {"rate": p_hit / (p_hit + p_miss), "coherence": p_hit + p_miss}


#: per task object, per (split, d_vocab): its evaluation prompts and the judge's label of every token as
#: their answer
_EVAL_SETS: weakref.WeakKeyDictionary[Task, dict] = weakref.WeakKeyDictionary()


def eval_set(task: Task, split: str, d_vocab: int) -> tuple[TokenDataset, torch.Tensor]:
    """``task.eval_prompts(split)`` and the judge's ``[n, d_vocab]`` label of every token as each
    prompt's answer, made once per task object (every fine-tune of a chapter is scored on them)."""
    sets = _EVAL_SETS.setdefault(task, {})
    if (split, d_vocab) not in sets:
        prompts = task.eval_prompts(split)
        labels = task.label_answers(prompts.tokens, torch.arange(d_vocab).expand(len(prompts), d_vocab))
        sets[split, d_vocab] = (prompts, labels.to(torch.int8))
    return sets[split, d_vocab]


def evaluate_task(
    model: HookedTransformer, task: Task, mode: str = "exact", fwd_hooks=(), splits=None
) -> dict[str, dict[str, float]]:
    """{split: {metric: mean over prompts}} for every evaluation split of ``task``."""
    out = {}
    for split in splits or task.eval_splits:
        prompts, labels = eval_set(task, split, model.cfg.d_vocab)
        r = behaviour_rate(model, prompts, task, mode=mode, fwd_hooks=fwd_hooks, candidate_labels=labels)
        out[split] = {
            task.metric(split): r["rate"].nanmean().item(),
            "coherence": r["coherence"].mean().item(),
        }
    return out
