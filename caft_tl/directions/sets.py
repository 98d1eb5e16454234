"""The direction sets the chapters compare, built in one place so names, hooks, ranks and seeds
cannot drift between chapter 03 and the notebook-free gate search.

- ``pca``: the PCs a rule chose at each hook; ``topk_pca``: the top PCs, as many per hook;
  ``random``: random directions, as many per hook (seed ``random_seed + i`` at the i-th hook used);
- ``sae``: chosen SAE latents; ``topk_sae``: the top-ranked latents, as many per hook;
  ``random_sae``: random directions of those ranks (seed ``random_seed + 1000 + i``);
- ``oracle``: ground-truth concept subspaces (always named ``oracle``: the upper bound, never a
  result of interpretation).
"""

from __future__ import annotations

from caft_tl.core.subspace import Subspace, random_subspace
from caft_tl.directions import sae as sae_lib


def pca_sets(pcs: dict[str, Subspace], chosen: dict[str, list[int]], d_model: int, random_seed: int = 0) -> dict[str, list[Subspace]]:
    """``pca`` / ``topk_pca`` / ``random`` at the hooks where ``chosen`` (PC indices per hook) is
    not empty; all three empty when nothing was chosen."""
    used = [h for h in pcs if chosen.get(h)]
    return {
        "pca": [pcs[h].select(chosen[h]) for h in used],
        "topk_pca": [pcs[h].select(list(range(len(chosen[h])))) for h in used],
        "random": [random_subspace(d_model, len(chosen[h]), h, seed=random_seed + i) for i, h in enumerate(used)],
    }


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
