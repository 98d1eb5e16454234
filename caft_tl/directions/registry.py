"""The direction sets the chapters compare, in one registry chosen by name (like the intervention
modes), so names, hooks, ranks and seeds cannot drift between chapter 03, the gate search and real
tasks.

Each set is a :class:`SetSpec`: a name, a builder that reads :class:`SetInputs` only, the inputs it
needs, and a one-line description. :func:`build` makes every set whose inputs are given (or the named
ones); ground truth (:class:`GroundTruth`) is an optional input that only organism tasks fill, so a
real model gets every set but the ``oracle`` ones (:attr:`SetSpec.needs_ground_truth`). A set that
comes out empty (nothing chosen at any hook) is left out. A new set is one decorated function:
``@register_set("name", needs=("pcs", "chosen"), description=...)``.

Seeds: ``random`` uses ``random_seed + i`` at the i-th hook used, ``random_sae``
``random_seed + 1000 + i``; the null distribution is :func:`caft_tl.directions.sets.null_sets`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

from sae_lens import SAE

from caft_tl.core.subspace import Subspace, random_subspace
from caft_tl.directions import sae as sae_lib


@dataclass(frozen=True)
class GroundTruth:
    """What only an organism can give: the unwanted concept's ground-truth subspace per hook, and
    the PCs the ground-truth rule picks per hook (:func:`caft_tl.directions.oracle.chosen_by_hook`)."""

    concepts: dict[str, Subspace]
    pc_choice: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class SetInputs:
    """Everything a set builder may read; a field left None leaves out the sets that need it.

    ``pcs``: each hook's PCs; ``chosen``: the PC indices the interpreter chose per hook;
    ``harmless``: as many PCs per hook whose ablation does not hurt the plain fine-tune
    (:mod:`caft_tl.directions.noninterp`); ``saes`` / ``chosen_latents`` / ``ranked_latents``: each
    hook's SAE, the latents the interpreter chose and the latents in ranking order;
    ``persona_vector``: one subspace per hook (:mod:`caft_tl.directions.persona_vector`);
    ``truth``: the ground truth, organisms only.

    Example:
        >>> from caft_tl.core.subspace import random_subspace
        >>> pcs = {"blocks.0.hook_resid_post": random_subspace(16, 4, "blocks.0.hook_resid_post", seed=0)}
        >>> inputs = SetInputs(d_model=16, pcs=pcs, chosen={"blocks.0.hook_resid_post": [2]})
        >>> sorted(build(inputs))
        ['pca', 'random', 'topk_pca']
    """

    d_model: int
    random_seed: int = 0
    pcs: dict[str, Subspace] | None = None
    chosen: dict[str, list[int]] | None = None
    harmless: dict[str, list[int]] | None = None
    saes: dict[str, SAE] | None = None
    chosen_latents: dict[str, list[int]] | None = None
    ranked_latents: dict[str, list[int]] | None = None
    persona_vector: list[Subspace] | None = None
    truth: GroundTruth | None = None


#: f(inputs) -> one subspace per hook (empty: the set is left out)
SetBuilder = Callable[[SetInputs], list[Subspace]]

_FIELDS = tuple(f.name for f in fields(SetInputs))


@dataclass(frozen=True)
class SetSpec:
    """Everything about one direction set: ``needs`` names the :class:`SetInputs` fields it reads."""

    name: str
    build: SetBuilder
    needs: tuple[str, ...]
    description: str

    @property
    def needs_ground_truth(self) -> bool:
        """Whether the set reads the ground truth (an upper bound, never a result of interpretation)."""
        return "truth" in self.needs


#: set name -> its spec, in registration order (the order chapters list them in)
SETS: dict[str, SetSpec] = {}


def register_set(name: str, *, needs: tuple[str, ...], description: str):
    """Decorator: register a builder as direction set ``name``; a name registered twice, or a need
    that is no :class:`SetInputs` field, raises ValueError.

    Args:
        name: the set's name, written in the results' ``directions`` column.
        needs: the :class:`SetInputs` fields the builder reads (``truth``: it needs ground truth).
        description: one line, shown where sets are listed.

    Returns:
        The decorator, which returns the builder unchanged.

    Example:
        >>> @register_set(
        ...     "first_pc", needs=("pcs",), description="the top PC at every hook"
        ... )  # doctest: +SKIP
        ... def first_pc(x):
        ...     return [s.select([0]) for s in x.pcs.values()]
    """
    if name in SETS:
        raise ValueError(f"direction set {name!r} is already registered")
    bad = [f for f in needs if f not in _FIELDS]
    if bad:
        raise ValueError(f"direction set {name!r} needs unknown inputs {bad}; valid: {', '.join(_FIELDS)}")

    def deco(fn: SetBuilder) -> SetBuilder:
        SETS[name] = SetSpec(name, fn, tuple(needs), description)
        return fn

    return deco


def get_set(name: str) -> SetSpec:
    """The spec of set ``name``; an unknown name raises a one-line ValueError naming the valid ones."""
    if name not in SETS:
        raise ValueError(f"unknown direction set {name!r}; valid: {', '.join(SETS)}")
    return SETS[name]


def without_ground_truth(names: list[str]) -> tuple[list[str], list[str]]:
    """``names`` split into the sets that need no ground truth and those that do, for a task without
    it (a chapter tests the flag, never a name); an unknown name raises."""
    needs = {n: get_set(n).needs_ground_truth for n in names}
    return [n for n in names if not needs[n]], [n for n in names if needs[n]]


def build(inputs: SetInputs, names: list[str] | None = None) -> dict[str, list[Subspace]]:
    """``{name: [Subspace per hook]}`` for ``names`` (default: every set whose inputs are given), in
    registration order; sets that come out empty are left out. A named set whose inputs are missing
    raises a one-line ValueError naming them.

    Args:
        inputs: what the builders may read (:class:`SetInputs`).
        names: the sets to build, or None for every set whose inputs are given.

    Returns:
        ``{set name: [Subspace per hook]}``.

    Example:
        >>> sets = build(SetInputs(d_model=16, pcs=pcs, chosen=chosen), ["pca", "random"])  # doctest: +SKIP
    """
    out = {}
    for spec in [get_set(n) for n in names] if names is not None else SETS.values():
        missing = [f for f in spec.needs if getattr(inputs, f) is None]
        if missing and names is not None:
            what = (
                "ground truth, which only organism tasks give" if spec.needs_ground_truth else "these inputs"
            )
            fields = ", ".join(f"SetInputs.{f}" for f in missing)
            raise ValueError(f"direction set {spec.name!r} needs {what}: {fields} is None")
        if not missing and (subs := spec.build(inputs)):
            out[spec.name] = subs
    return out


def _chosen_pcs(pcs: dict[str, Subspace], chosen: dict[str, list[int]]) -> list[Subspace]:
    return [pcs[h].select(chosen[h]) for h in pcs if chosen.get(h)]


@register_set("pca", needs=("pcs", "chosen"), description="the PCs the interpreter chose at each hook")
def _pca(x: SetInputs) -> list[Subspace]:
    return _chosen_pcs(x.pcs, x.chosen)


@register_set(
    "topk_pca", needs=("pcs", "chosen"), description="the top PCs, as many as chosen, at the same hooks"
)
def _topk_pca(x: SetInputs) -> list[Subspace]:
    return _chosen_pcs(x.pcs, {h: list(range(len(c))) for h, c in x.chosen.items()})


@register_set(
    "random",
    needs=("pcs", "chosen"),
    description="random directions of the chosen PCs' ranks at the same hooks",
)
def _random(x: SetInputs) -> list[Subspace]:
    used = [h for h in x.pcs if x.chosen.get(h)]
    return [
        random_subspace(x.d_model, len(x.chosen[h]), h, seed=x.random_seed + i) for i, h in enumerate(used)
    ]


@register_set(
    "noninterp_pca",
    needs=("pcs", "chosen", "harmless"),
    description="as many PCs whose ablation leaves the plain fine-tune's loss unhurt (no reading)",
)
def _noninterp_pca(x: SetInputs) -> list[Subspace]:
    return [x.pcs[h].select(x.harmless[h]) for h in x.pcs if x.chosen.get(h) and x.harmless.get(h)]


@register_set(
    "persona_vector",
    needs=("persona_vector",),
    description="the persona vector from contrastive prompts, no fine-tune",
)
def _persona_vector(x: SetInputs) -> list[Subspace]:
    return list(x.persona_vector)


@register_set(
    "oracle", needs=("truth",), description="the ground-truth concept subspace at each hook: the upper bound"
)
def _oracle(x: SetInputs) -> list[Subspace]:
    return list(x.truth.concepts.values())


@register_set(
    "oracle_pca",
    needs=("pcs", "truth"),
    description="the PCs the ground truth picks: the upper bound of reading PCs",
)
def _oracle_pca(x: SetInputs) -> list[Subspace]:
    return _chosen_pcs(x.pcs, x.truth.pc_choice)


def _chosen_latents(x: SetInputs) -> list[Subspace]:
    return [sae_lib.latent_subspace(x.saes[h], ids) for h, ids in x.chosen_latents.items() if ids]


@register_set(
    "sae",
    needs=("saes", "chosen_latents"),
    description="the decoder directions of the latents the interpreter chose",
)
def _sae(x: SetInputs) -> list[Subspace]:
    return _chosen_latents(x)


@register_set(
    "topk_sae",
    needs=("saes", "chosen_latents", "ranked_latents"),
    description="the top-ranked latents, as many as chosen, at the same hooks",
)
def _topk_sae(x: SetInputs) -> list[Subspace]:
    return [
        sae_lib.latent_subspace(x.saes[h], x.ranked_latents[h][: len(ids)], name="topk_sae")
        for h, ids in x.chosen_latents.items()
        if ids
    ]


@register_set(
    "random_sae",
    needs=("saes", "chosen_latents"),
    description="random directions of the chosen latents' ranks",
)
def _random_sae(x: SetInputs) -> list[Subspace]:
    return [
        random_subspace(x.d_model, s.k, s.hook_name, seed=x.random_seed + 1000 + i)
        for i, s in enumerate(_chosen_latents(x))
    ]
