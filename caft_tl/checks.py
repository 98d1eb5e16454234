"""Checks on the base model with no training: what does an intervention do to the behaviour, and
where does the base model sit on each direction (the sign of its mean projection)?"""

from __future__ import annotations

import pandas as pd
import torch
from transformer_lens import HookedTransformer

from caft_tl.data import TokenDataset
from caft_tl.evaluate import behaviour_rate
from caft_tl.interpret import projections
from caft_tl.interventions import Intervention


def mean_projection(model: HookedTransformer, data: TokenDataset, intervention: Intervention, positions: str = "all") -> pd.DataFrame:
    """Mean (and std) projection of the activations on each direction of each subspace."""
    mask = data.position_mask(positions)
    rows = []
    for s in intervention.subspaces:
        proj = projections(model, data, s)[mask]  # [n_sel, k]
        for j, label in enumerate(s.labels):
            rows.append({"hook": s.hook_name, "direction": label, "mean_projection": proj[:, j].mean().item(),
                         "std": proj[:, j].std().item()})
    return pd.DataFrame(rows)


def ablation_check(model: HookedTransformer, task, intervention: Intervention, mode: str = "exact") -> pd.DataFrame:
    """Behaviour rate per prompt on every split with the intervention off and on (inference only).

    Columns: split, metric, condition (``off``/``on``), prompt, rate.
    """
    intervention.check(model)
    rows = []
    for split in task.eval_splits:
        prompts = task.eval_prompts(split)
        for cond, hooks in (("off", []), ("on", intervention.fwd_hooks(prompts))):
            rate = behaviour_rate(model, prompts, task, mode=mode, fwd_hooks=hooks)["rate"]
            rows += [{"split": split, "metric": task.metric(split), "condition": cond, "prompt": i, "rate": r}
                     for i, r in enumerate(rate.tolist())]
    return pd.DataFrame(rows)
