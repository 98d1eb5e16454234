"""The direction sets the chapters compare, built in one place so names, hooks, ranks and seeds
cannot drift between chapter 03 and the notebook-free gate search.

- ``pca``: the PCs the interpreter chose at each hook (:mod:`caft_tl.directions.explain`, from
  allowed information only); ``topk_pca``: the top PCs, as many per hook; ``random``: random
  directions, as many per hook (seed ``random_seed + i`` at the i-th hook used), fine-tuned over
  every seed; ``noninterp_pca``: as many PCs per hook whose ablation does not hurt the plain
  fine-tune's loss (:mod:`caft_tl.directions.noninterp`);
- the **null distribution** ``random/0`` … ``random/<n−1>`` (:func:`null_sets`): further random
  subspaces of the same hooks and ranks, one fine-tuning seed each (``directions`` carries the
  draw index; folders write ``random_3``);
- ``sae``: the latents the interpreter chose; ``topk_sae``: the top-ranked latents, as many per
  hook; ``random_sae``: random directions of those ranks (seed ``random_seed + 1000 + i``);
- ``oracle``: ground-truth concept subspaces; ``oracle_pca``: the PCs the ground truth picks
  (the old rule). Both always carry ``oracle``: the upper bound, never a result of interpretation.
"""

from __future__ import annotations

from caft_tl.core.subspace import Subspace, random_subspace
from caft_tl.directions import sae as sae_lib

#: the prefix of the null distribution's draws: ``random/0``, ``random/1``, …
NULL_PREFIX = "random/"


def pca_sets(pcs: dict[str, Subspace], chosen: dict[str, list[int]], d_model: int, random_seed: int = 0,
             harmless: dict[str, list[int]] | None = None) -> dict[str, list[Subspace]]:
    """``pca`` / ``topk_pca`` / ``random`` (and ``noninterp_pca`` from ``harmless``, PC indices
    per hook) at the hooks where ``chosen`` (PC indices per hook) is not empty; all empty when
    nothing was chosen."""
    used = [h for h in pcs if chosen.get(h)]
    out = {
        "pca": [pcs[h].select(chosen[h]) for h in used],
        "topk_pca": [pcs[h].select(list(range(len(chosen[h])))) for h in used],
        "random": [random_subspace(d_model, len(chosen[h]), h, seed=random_seed + i) for i, h in enumerate(used)],
    }
    if harmless is not None:
        out["noninterp_pca"] = [pcs[h].select(harmless[h]) for h in used if harmless.get(h)]
    return out


def null_name(draw: int) -> str:
    return f"{NULL_PREFIX}{draw}"


def is_null(directions: str) -> bool:
    """Whether a ``directions`` value is a draw of the null distribution."""
    return directions.startswith(NULL_PREFIX) and directions[len(NULL_PREFIX):].isdigit()


def null_sets(like: list[Subspace], d_model: int, n_draws: int = 20, random_seed: int = 0) -> dict[str, list[Subspace]]:
    """``n_draws`` random subspaces with ``like``'s hooks and ranks: ``{random/i: [Subspace per hook]}``
    (seed ``random_seed + 10_000 + 100 i + j`` at the j-th hook; none is the ``random`` set)."""
    return {null_name(i): [random_subspace(d_model, s.k, s.hook_name, seed=random_seed + 10_000 + 100 * i + j) for j, s in enumerate(like)]
            for i in range(n_draws)}


def sae_sets(saes: dict, chosen: dict[str, list[int]], ranked: dict[str, list[int]], d_model: int, random_seed: int = 0) -> dict[str, list[Subspace]]:
    """``sae`` / ``topk_sae`` / ``random_sae`` at the hooks where ``chosen`` (latent ids per hook) is
    not empty; ``ranked``: each hook's latents in ranking order."""
    used = [h for h in chosen if chosen[h]]
    chosen_subs = [sae_lib.latent_subspace(saes[h], chosen[h]) for h in used]
    return {
        "sae": chosen_subs,
        "topk_sae": [sae_lib.latent_subspace(saes[h], ranked[h][: len(chosen[h])], name="topk_sae") for h in used],
        "random_sae": [random_subspace(d_model, s.k, s.hook_name, seed=random_seed + 1000 + i) for i, s in enumerate(chosen_subs)],
    }
