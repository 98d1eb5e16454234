"""The null distribution of random subspaces: ``random/0`` … ``random/<n−1>`` (:func:`null_sets`),
further random subspaces of the hooks and ranks of a set, one fine-tuning seed each (``directions``
carries the draw index; folders write ``random_3``). The named direction sets themselves are built
by :mod:`caft_tl.directions.registry`.
"""

from __future__ import annotations

from caft_tl.core.subspace import Subspace, random_subspace

#: the prefix of the null distribution's draws: ``random/0``, ``random/1``, …
NULL_PREFIX = "random/"


def null_name(draw: int) -> str:
    return f"{NULL_PREFIX}{draw}"


def is_null(directions: str) -> bool:
    """Whether a ``directions`` value is a draw of the null distribution."""
    return directions.startswith(NULL_PREFIX) and directions[len(NULL_PREFIX) :].isdigit()


def null_sets(
    like: list[Subspace], d_model: int, n_draws: int = 20, random_seed: int = 0
) -> dict[str, list[Subspace]]:
    """``n_draws`` random subspaces with ``like``'s hooks and ranks: ``{random/i: [Subspace per hook]}``
    (seed ``random_seed + 10_000 + 100 i + j`` at the j-th hook; none is the ``random`` set)."""
    return {
        null_name(i): [
            random_subspace(d_model, s.k, s.hook_name, seed=random_seed + 10_000 + 100 * i + j)
            for j, s in enumerate(like)
        ]
        for i in range(n_draws)
    }
