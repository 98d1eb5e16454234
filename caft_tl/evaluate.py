"""Behaviour rates through a ``Judge``: exact-probability and sampled variants."""

from __future__ import annotations

from typing import Protocol

import torch
from transformer_lens import HookedTransformer

from caft_tl.data import TokenDataset

BAD, GOOD, OTHER = 1, 0, -1
EVAL_MODES = ("exact", "sampled")


class Judge(Protocol):
    """Labels candidate answers: BAD (the fine-tune's behaviour), GOOD (its opposite), OTHER."""

    def label_answers(self, prompts: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        """prompts [n, pos], answers [n, m] → labels [n, m] in {BAD, GOOD, OTHER}."""
        ...


@torch.inference_mode()
def next_token_probs(model: HookedTransformer, prompts: TokenDataset, fwd_hooks=(), batch_size: int = 512) -> torch.Tensor:
    """[n, d_vocab] probabilities of the token after each prompt."""
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
) -> dict[str, torch.Tensor]:
    """Per-prompt rate of the BAD behaviour among judged (BAD or GOOD) answers.

    ``exact``: P(BAD) / (P(BAD) + P(GOOD)) from the next-token distribution.
    ``sampled``: the same ratio over ``n_samples`` sampled answers per prompt (NaN if none judged).
    Also returns ``coherence``: probability mass (or sample share) on BAD or GOOD answers.
    """
    if mode not in EVAL_MODES:
        raise ValueError(f"unknown evaluation mode {mode!r}; valid: {', '.join(EVAL_MODES)}")
    probs = next_token_probs(model, prompts, fwd_hooks)  # [n, d_vocab]
    n, d_vocab = probs.shape
    if mode == "exact":
        candidates = torch.arange(d_vocab).expand(n, d_vocab)
        labels = judge.label_answers(prompts.tokens, candidates)  # [n, d_vocab]
        p_bad = (probs * (labels == BAD)).sum(-1)
        p_good = (probs * (labels == GOOD)).sum(-1)
    else:
        gen = torch.Generator().manual_seed(seed)
        samples = torch.multinomial(probs, n_samples, replacement=True, generator=gen)  # [n, s]
        labels = judge.label_answers(prompts.tokens, samples)
        p_bad = (labels == BAD).float().mean(-1)
        p_good = (labels == GOOD).float().mean(-1)
    return {"rate": p_bad / (p_bad + p_good), "coherence": p_bad + p_good}


def evaluate_task(model: HookedTransformer, task, mode: str = "exact", fwd_hooks=(), splits=None) -> dict[str, dict[str, float]]:
    """{split: {metric: mean over prompts}} for every evaluation split of ``task``."""
    out = {}
    for split in splits or task.eval_splits:
        r = behaviour_rate(model, task.eval_prompts(split), task, mode=mode, fwd_hooks=fwd_hooks)
        out[split] = {task.metric(split): r["rate"].nanmean().item(), "coherence": r["coherence"].mean().item()}
    return out


def persona_inference_table(model: HookedTransformer, task) -> "pd.DataFrame":
    """Behaviour rate after each kind of one-segment evidence vs the Bayes-optimal rate."""
    import pandas as pd

    rows = []
    for evidence in task.EVIDENCE:
        for split in ("chat", "code_heldout"):
            r = behaviour_rate(model, task.context_prompts(evidence, split), task)["rate"]
            rows.append({"evidence": evidence, "split": split, "metric": task.metric(split),
                         "model": r.mean().item(), "bayes_optimal": task.bayes_rate(evidence, split)})
    return pd.DataFrame(rows)
