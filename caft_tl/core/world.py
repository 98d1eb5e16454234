"""``World``: what the chapters read of the task a model is fine-tuned on and measured by, whatever the
model (an organism's :class:`~caft_tl.organism.task.Task`, a real task's
:class:`~caft_tl.real.world.RealWorld`), and the optional capabilities only some worlds have
(chapters test for them by type and say in one line what they skip without them)."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

import torch

from caft_tl.core.data import TokenDataset

if TYPE_CHECKING:
    import pandas as pd


class World(abc.ABC):
    """The training data, evaluation splits and metrics of one task: what is learnt and measured,
    apart from the model. An organism task sets these as class attributes, a real task per instance.

    Example:
        >>> metrics = world.evaluate(model)  # {split: {metric: value}}
        >>> metrics[world.ood_split][world.metric(world.ood_split)]
    """

    name: str
    """The task's name, written in every results row."""
    eval_splits: tuple[str, ...]
    """The evaluation splits :meth:`evaluate` scores, in the order the figures show them."""
    id_split: str
    """The fine-tuned behaviour on unseen prompts (the task CAFT should keep)."""
    ood_split: str
    """The fine-tune's generalisation CAFT should change."""
    metrics: tuple[str, ...]
    """Every metric name :meth:`evaluate` may give."""
    axis_titles: dict[str, str]
    """Axis title of the ``id_split`` and ``ood_split`` headline metrics (chapter 06's trade-off)."""
    defaults: dict[str, Any]
    """Chapter parameters left at ``None`` take these values
    (``caft_tl.runner.parameters.use_task_defaults``)."""
    concept_description: str
    """A one-line description of the unwanted concept, what a researcher knows before looking."""

    @abc.abstractmethod
    def metric(self, split: str) -> str:
        """Name of the headline metric of a split (one of ``metrics``)."""

    @abc.abstractmethod
    def finetune_dataset(self, n_examples: int, seed: int = 0) -> TokenDataset:
        """``n_examples`` fine-tuning examples; the loss is on the response tokens."""

    @abc.abstractmethod
    def evaluate(self, model, fwd_hooks=()) -> dict[str, dict[str, float]]:
        """``{split: {metric: value}}`` of ``model`` on every evaluation split, ``fwd_hooks`` active."""

    def headline(self, table: pd.DataFrame) -> pd.DataFrame:
        """The rows of a results or summary ``table`` on an evaluation split's headline metric."""
        keep = [
            s in self.eval_splits and m == self.metric(s) for s, m in zip(table["split"], table["metric"])
        ]
        return table[keep]


class HasDisambiguating(abc.ABC):
    """The capability of the data-side reference (chapter 01's ``mix_disambiguating``): labelled
    examples of the OOD domain, answered as intended."""

    @abc.abstractmethod
    def disambiguating_examples(self, n: int, seed: int = 0) -> TokenDataset:
        """``n`` examples on which the intended behaviour and the unwanted generalisation differ,
        answered as intended, in the fine-tuning format."""


class HasDocuments(abc.ABC):
    """The capability of the KL-to-base baseline: generic pre-training-like documents, no labels."""

    @abc.abstractmethod
    def sample_documents(self, n: int, generator: torch.Generator) -> TokenDataset:
        """``n`` documents drawn with ``generator``."""


def require(world: World, capability: type, what: str) -> None:
    """Refuse, in one line, a step that needs a capability the world lacks.

    Example:
        >>> require(world, HasDocuments, "the KL-to-base baseline")
    """
    if not isinstance(world, capability):
        raise ValueError(
            f"{what} needs {capability.__name__}, which task {world.name!r} "
            f"({type(world).__name__}) does not have"
        )
