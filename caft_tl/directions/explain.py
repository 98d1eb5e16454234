"""An automated explainer that obeys the information rule, and the documented rule that turns its
labels into the directions to ablate.

It reads only an :class:`~caft_tl.directions.information.InterpretationInputs`. For each
direction and each sign (a PC's two ends; an SAE latent's positive end):

1. **Top-activating examples** on the allowed data (the documents at every position, the
   fine-tuning data at its response-writing positions), split at random *by example* into an
   explain half and a held-out half. Each example is read at its peak position through a window
   of the ``window`` tokens up to it (what a reader sees around the marked token).
2. **Logit lens**: the ``n_lens`` tokens with the largest ``s · W_Uᵀ q``.
3. **Label**: for each lexicon group ``g``, its *lift* (share of the top ``n_top`` examples'
   windows holding a token of ``g`` minus the share among all positions of the explain half)
   plus ``lens_weight`` × its share of the logit-lens tokens; the label is the group with the
   largest evidence. ``shares`` lists the groups with the largest evidence.
4. **Detection score** on the held-out half: the AUROC with which ``s ·`` projection separates
   positions whose window holds the label's group from those whose window does not (0.5:
   chance; 1: the direction reads exactly that group).

**The choice rule** (:func:`choose`): keep a direction when, at either sign, its label is one of
the unwanted concept's lexicon groups (``concept_groups``, from the one-line description) with
positive lift and a detection score of at least ``min_detection``. A hook where no direction
qualifies gets nothing. If no direction qualifies at any hook, the rule keeps the single
direction whose held-out detection of a concept group is highest and says so (``fallback``):
chapters 04–05 still get a set to compare, and the rows of chapter 03 record that the rule
found nothing (``n_chosen`` 0 and ``fallback`` 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats
import torch

from caft_tl.core.subspace import Subspace
from caft_tl.directions.information import InformationRuleError, InterpretationInputs
from caft_tl.directions.interpret import projections


def _check(inputs) -> None:
    if not isinstance(inputs, InterpretationInputs):
        raise InformationRuleError(
            f"an interpreter reads InterpretationInputs only, not a {type(inputs).__name__} "
            "(build them with caft_tl.directions.information.interpretation_inputs)"
        )


def window_membership(tokens: torch.Tensor, member: torch.Tensor, window: int) -> torch.Tensor:
    """[n, pos, n_groups] bool: whether the ``window`` tokens up to each position hold a token of
    each group."""
    m = member[tokens].int()  # [n, pos, G]
    cs = torch.cat([torch.zeros_like(m[:, :1]), m.cumsum(1)], 1)  # [n, pos + 1, G]
    t = torch.arange(tokens.shape[1])
    return (cs[:, t + 1] - cs[:, (t + 1 - window).clamp_min(0)]) > 0


@dataclass
class Readings:
    """The allowed positions, flattened: values [N, k] of each direction, group membership [N, G]
    of each position's window, and which example [N] (over all datasets) each position belongs to."""

    values: torch.Tensor
    member: torch.Tensor
    example: torch.Tensor


def readings(values: dict[str, torch.Tensor], inputs: InterpretationInputs, window: int = 4) -> Readings:
    """Flatten ``{dataset name: [n, pos, k] values}`` over each dataset's allowed positions."""
    _check(inputs)
    member = inputs.membership()
    vs, ms, ex, offset = [], [], [], 0
    for name, (data, positions) in inputs.datasets.items():
        mask = data.position_mask(positions)  # [n, pos]
        vs.append(values[name][mask])
        ms.append(window_membership(data.tokens, member, window)[mask])
        ex.append((torch.arange(len(data))[:, None].expand_as(mask) + offset)[mask])
        offset += len(data)
    return Readings(torch.cat(vs).float(), torch.cat(ms), torch.cat(ex))


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (ties counted half); NaN if one class
    is empty."""
    n1, n = int(positive.sum()), len(positive)
    if n1 == 0 or n1 == n:
        return float("nan")
    ranks = scipy.stats.rankdata(scores)
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * (n - n1)))


def explain_values(
    r: Readings,
    inputs: InterpretationInputs,
    hook: str,
    labels: list[str],
    indices: list[int],
    lens: torch.Tensor | None = None,
    signs=(1, -1),
    n_top: int = 30,
    n_lens: int = 10,
    lens_weight: float = 0.5,
    seed: int = 0,
) -> pd.DataFrame:
    """Label and detection score of each column of ``r.values`` at each sign (see the module
    docstring). ``lens``: [k, d_vocab] logit-lens scores of each direction (None: no lens).
    One row per (direction, sign): hook, direction, index, sign, label, lift, lens_share,
    evidence, detection, concept_detection (the best held-out AUROC of a concept group), shares,
    lens_tokens."""
    _check(inputs)
    groups = inputs.groups
    member_vocab = inputs.membership()
    n_examples = int(r.example.max()) + 1
    held = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed))[: n_examples // 2]
    is_held = torch.zeros(n_examples, dtype=torch.bool)
    is_held[held] = True
    h = is_held[r.example].numpy()
    member = r.member.numpy()
    base_share = member[~h].mean(0)  # [G]
    concept_cols = [groups.index(g) for g in inputs.concept_groups]
    rows = []
    for j, (name, index) in enumerate(zip(labels, indices)):
        for s in signs:
            v = s * r.values[:, j].numpy()
            # top examples of the explain half: each example once, at its peak position
            ex_idx = np.flatnonzero(~h)
            order = ex_idx[np.argsort(-v[ex_idx], kind="stable")]
            _, first = np.unique(r.example.numpy()[order], return_index=True)
            top = order[np.sort(first)][:n_top]  # [n_top] positions, best example first
            lift = member[top].mean(0) - base_share
            if lens is not None:
                top_tokens = (s * lens[j]).topk(n_lens).indices
                lens_share = member_vocab[top_tokens].float().mean(0).numpy()
                lens_tokens = ", ".join(inputs.vocab.tokens[i] for i in top_tokens.tolist())
            else:
                lens_share, lens_tokens = np.zeros(len(groups)), ""
            evidence = lift + lens_weight * lens_share
            g = int(np.argmax(evidence))
            det = auroc(v[h], member[h, g])
            concept_det = np.nanmax([auroc(v[h], member[h, c]) for c in concept_cols] + [0.0])
            best = np.argsort(-evidence)[:3]
            rows.append(
                {
                    "hook": hook,
                    "direction": name,
                    "index": index,
                    "sign": "+" if s > 0 else "-",
                    "label": groups[g],
                    "lift": float(lift[g]),
                    "lens_share": float(lens_share[g]),
                    "evidence": float(evidence[g]),
                    "detection": 0.5 if np.isnan(det) else det,
                    "concept_detection": float(concept_det),
                    "shares": ", ".join(f"{groups[b]} {member[top, b].mean():.2f}" for b in best),
                    "lens_tokens": lens_tokens,
                }
            )
    return pd.DataFrame(rows)


def explain_subspace(
    model, subspace: Subspace, inputs: InterpretationInputs, window: int = 4, **kw
) -> pd.DataFrame:
    """:func:`explain_values` for every direction of ``subspace`` (both signs), on the model's
    projections of the allowed data; logit lens ``W_Uᵀ q``."""
    _check(inputs)
    values = {name: projections(model, data, subspace) for name, (data, _) in inputs.datasets.items()}
    lens = (subspace.basis.T.to(model.W_U.device) @ model.W_U).detach().cpu()  # [k, d_vocab]
    return explain_values(
        readings(values, inputs, window),
        inputs,
        subspace.hook_name,
        subspace.labels,
        list(range(subspace.k)),
        lens=lens,
        **kw,
    )


def explain_subspaces(
    model, subspaces: dict[str, Subspace], inputs: InterpretationInputs, **kw
) -> pd.DataFrame:
    """:func:`explain_subspace` at every hook, one table."""
    return pd.concat(
        [explain_subspace(model, s, inputs, **kw) for s in subspaces.values()], ignore_index=True
    )


def explain_latents(
    model, saes: dict, latents: dict[str, list[int]], inputs: InterpretationInputs, window: int = 4, **kw
) -> pd.DataFrame:
    """:func:`explain_values` for SAE latents (``{hook: latent ids}``), positive end only: their
    activations on the allowed data; logit lens of their decoder directions. ``index`` is the latent id."""
    from caft_tl.directions import sae as sae_lib

    _check(inputs)
    out = []
    for hook, ids in latents.items():
        if not ids:
            continue
        sae = saes[hook]
        values = {
            name: sae_lib.latent_activations(model, data, sae, ids)
            for name, (data, _) in inputs.datasets.items()
        }
        lens = (sae_lib.decoder_directions(sae, ids).T.to(model.W_U.device) @ model.W_U).detach().cpu()
        out.append(
            explain_values(
                readings(values, inputs, window),
                inputs,
                hook,
                [f"L{i}" for i in ids],
                list(ids),
                lens=lens,
                signs=(1,),
                **kw,
            )
        )
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


@dataclass(frozen=True)
class Choice:
    """The directions the rule kept, per hook (indices: PCs, or latent ids), and whether it fell back."""

    chosen: dict[str, list[int]]
    fallback: bool = False

    def to_json(self) -> dict:
        return {"chosen": self.chosen, "fallback": self.fallback}


def qualifies(table: pd.DataFrame, inputs: InterpretationInputs, min_detection: float = 0.7) -> pd.Series:
    """Rows (direction, sign) whose label is a concept group, with positive lift and detection
    ≥ ``min_detection``."""
    _check(inputs)
    return (
        table["label"].isin(inputs.concept_groups)
        & (table["lift"] > 0)
        & (table["detection"] >= min_detection)
    )


def choose(
    table: pd.DataFrame, inputs: InterpretationInputs, hooks: list[str], min_detection: float = 0.7
) -> Choice:
    """The documented rule (module docstring): ``{hook: [index, …]}`` for every hook in ``hooks``."""
    ok = table[qualifies(table, inputs, min_detection)] if len(table) else table
    chosen = {h: sorted({int(i) for i in ok.loc[ok["hook"] == h, "index"]}) if len(ok) else [] for h in hooks}
    if any(chosen.values()) or not len(table):
        return Choice(chosen)
    best = table.sort_values("concept_detection", ascending=False, kind="stable").iloc[0]
    chosen[best["hook"]] = [int(best["index"])]
    return Choice(chosen, fallback=True)
