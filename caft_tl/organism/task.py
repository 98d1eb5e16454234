"""``Task``: the interface every organism task offers, all the chapters and modules read of it."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from caft_tl.core.data import TokenDataset
from caft_tl.core.subspace import Subspace
from caft_tl.core.world import HasDisambiguating, HasDocuments, World
from caft_tl.organism.judge import evaluate_task
from caft_tl.organism.vocab import Vocab

if TYPE_CHECKING:
    import pandas as pd
    from transformer_lens import HookedTransformer


class HasGroundTruth(abc.ABC):
    """The capability only a model organism has, because its concepts are planted: ground-truth
    concept directions (the ``oracle`` direction sets, the scores of an interpretation, chapter
    04's concept probes), the hidden kinds of its pre-training documents, and the validity gates.
    Chapters test for it by type (``isinstance(world, HasGroundTruth)``) and say in one line what
    they skip without it."""

    CONCEPTS: ClassVar[dict[str, Any]]
    """Ground-truth concept name → the task's definition of it (the columns of chapter 03's scores)."""
    target_concept: ClassVar[str]
    """The concept CAFT should remove (chapter 03's rule)."""
    avoid_concept: ClassVar[str]
    """The concept the fine-tune should keep (chapter 03's rule)."""
    doc_kinds: ClassVar[tuple[str, ...]]
    """The names :meth:`document_kinds` gives the pre-training documents."""
    has_gates: ClassVar[bool] = False
    """Whether chapter 07 states the gates of ``caft_tl.evaluation.gates`` for this task."""

    @abc.abstractmethod
    def document_kinds(self, docs: TokenDataset) -> list[str]:
        """A name per pre-training document (one of ``doc_kinds``)."""

    @abc.abstractmethod
    def concept_directions(
        self, model: HookedTransformer, hooks: list[str]
    ) -> dict[str, dict[str, Subspace]]:
        """Rank-1 ground-truth concept directions on ``model``: ``{hook: {concept: Subspace}}``."""

    def concept_subspaces(
        self, model: HookedTransformer, hooks: list[str], k: int = 1
    ) -> dict[str, list[Subspace]]:
        """Ground-truth concept subspaces of rank ``k``: ``{concept: [Subspace per hook]}``; here
        the rank-1 :meth:`concept_directions` (a task with richer concepts overrides it)."""
        if k != 1:
            raise ValueError(f"task {self.name!r} gives rank-1 concept subspaces only (k=1), got k={k}")
        directions = self.concept_directions(model, hooks)
        return {c: [directions[h][c] for h in hooks] for c in self.CONCEPTS}


class Task(World, HasDisambiguating, HasDocuments, HasGroundTruth):
    """A synthetic world with planted, known concepts: its pre-training documents, fine-tuning
    data, evaluation prompts and ground-truth judge (it is a :class:`~caft_tl.organism.judge.Judge`);
    its ground truth is the :class:`HasGroundTruth` capability. Subclasses set every class
    attribute of :class:`~caft_tl.core.world.World` (``name`` is the registry name,
    ``caft_tl.organism.TASKS``), those below and the capability's."""

    report: ClassVar[dict[str, str]]
    """``title``, ``x_title`` and ``reference`` of chapter 00's figure of :meth:`base_report`."""
    concept_groups: ClassVar[tuple[str, ...]]
    """The :meth:`lexicon` groups whose meaning is the unwanted concept (``("harmful",)``); the
    interpreter reads :attr:`concept_description` through them."""

    cfg: Any
    """The config dataclass of the world (``caft_tl.organism.TASKS[name][1]``)."""
    vocab: Vocab
    """The world's tokens."""

    @property
    @abc.abstractmethod
    def seq_len(self) -> int:
        """Length of a pre-training document (the model's ``n_ctx`` must hold it)."""

    def evaluate(self, model: HookedTransformer, fwd_hooks=()) -> dict[str, dict[str, float]]:
        """The ground-truth judge's exact rates on every split
        (:func:`caft_tl.organism.judge.evaluate_task`)."""
        return evaluate_task(model, self, fwd_hooks=fwd_hooks)

    @abc.abstractmethod
    def trait_prompts(self, n: int, seed: int = 0) -> tuple[TokenDataset, TokenDataset]:
        """Persona Vectors' contrast, made of allowed material only (the lexicon's tokens, prompts of
        the fine-tuning domain, the forms of pre-training documents): ``n`` prompts that evoke the
        unwanted behaviour and the same ``n`` with the evoking part swapped for one that suppresses
        it; each prompt's last position writes an answer."""

    @abc.abstractmethod
    def eval_prompts(self, split: str) -> TokenDataset:
        """Prompts of an evaluation split; the answer is the next token."""

    @abc.abstractmethod
    def label_answers(self, prompts: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        """Ground-truth judge: prompts [n, pos], answers [n, m] → [n, m] in {HIT, MISS, OTHER}."""

    @abc.abstractmethod
    def base_report(self, model: HookedTransformer) -> pd.DataFrame:
        """How chapter 00 shows the base organism: columns ``condition, split, metric, model, reference``."""

    @abc.abstractmethod
    def lexicon(self) -> dict[str, tuple[str, ...]]:
        """The meaning of vocabulary tokens, as a reader's world knowledge: a one-word meaning
        (``harmful``, ``positive``, ``golf``, ``answers``) → the tokens that carry it. Groups may
        overlap. Built from the vocabulary alone (no hidden labels, no model)."""
