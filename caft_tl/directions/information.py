"""The information rule, in code: what choosing directions may read.

Choosing directions may use the fine-tuning data; generic pre-training-like documents *without*
their hidden labels; the models' completions to generic prompts; the meaning of vocabulary tokens
(the task's :meth:`~caft_tl.organism.task.Task.lexicon`, a reader's world knowledge); and a
one-line description of the unwanted concept (``Task.concept_description``, read through the
lexicon groups ``Task.concept_groups``). It may **not** use OOD evaluation prompts or their
distribution, hidden document labels, ground-truth concept directions, or any fine-tune or CAFT
outcome.

It is structural: an interpreter (:mod:`caft_tl.directions.explain`) receives an
:class:`InterpretationInputs` and nothing of the task; :func:`interpretation_inputs` is the one
function that builds it from a task, and it calls only ``finetune_dataset``,
``sample_documents`` (whose labels it strips), ``trait_prompts``, ``lexicon`` and the concept description.
:class:`InterpretationInputs` refuses a dataset that carries labels (hidden personas, the
answers and spurious labels of evaluation prompts). ``tests/test_interpretation.py`` makes the
task's ``eval_prompts`` and ground-truth directions raise and runs the interpreter end to end.
The ground truth only *scores* the choice afterwards (:mod:`caft_tl.directions.oracle`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from caft_tl.core.data import POSITIONS, TokenDataset
from caft_tl.organism.task import Task
from caft_tl.organism.vocab import Vocab

#: labels a dataset may keep: derived from its own tokens, not hidden ground truth
ALLOWED_LABELS = ("length",)


class InformationRuleError(ValueError):
    """An interpreter was handed something the information rule forbids."""


def unlabelled(data: TokenDataset) -> TokenDataset:
    """``data`` without its hidden labels (only :data:`ALLOWED_LABELS` are kept)."""
    return TokenDataset(
        data.tokens, data.response_mask, {k: v for k, v in data.labels.items() if k in ALLOWED_LABELS}
    )


@dataclass(frozen=True)
class InterpretationInputs:
    """Everything an interpreter may read (see the module docstring), and nothing else.

    ``datasets``: name → (unlabelled tokens, the positions to read: ``all`` / ``response`` /
    ``prompt``); by default the generic documents (``documents``, all positions) and the
    fine-tuning data (``finetune``, the response-writing positions); completions of the base and
    fine-tuned models to generic prompts go here too. ``lexicon``: group → token ids.
    ``concept`` / ``concept_groups``: the one-line description of the unwanted concept and the
    lexicon groups that carry it. ``trait_prompts``: the task's prompts that evoke and suppress the
    unwanted behaviour (:mod:`caft_tl.directions.persona_vector` reads them; the explainer does not).
    """

    task_name: str
    vocab: Vocab
    lexicon: dict[str, tuple[int, ...]]
    concept: str
    concept_groups: tuple[str, ...]
    datasets: dict[str, tuple[TokenDataset, str]] = field(default_factory=dict)
    trait_prompts: tuple[TokenDataset, TokenDataset] | None = (
        None  # (evoke, suppress): Persona Vectors' contrast
    )

    def __post_init__(self) -> None:
        if not self.datasets:
            raise InformationRuleError("an interpreter needs at least one allowed dataset")
        trait = dict(zip(("trait_evoke", "trait_suppress"), self.trait_prompts or ()))
        for name, (data, positions) in {**self.datasets, **{k: (d, "all") for k, d in trait.items()}}.items():
            if not isinstance(data, TokenDataset):
                raise InformationRuleError(f"dataset {name!r} is a {type(data).__name__}, not a TokenDataset")
            hidden = [k for k in data.labels if k not in ALLOWED_LABELS]
            if hidden:
                raise InformationRuleError(
                    f"dataset {name!r} carries labels {hidden}: "
                    "hidden labels (and evaluation prompts, which carry them) "
                    "are not allowed to choose directions; pass unlabelled(data) of allowed data"
                )
            if positions not in POSITIONS:
                raise ValueError(
                    f"dataset {name!r}: unknown positions {positions!r}; valid: {', '.join(POSITIONS)}"
                )
        unknown = [g for g in self.concept_groups if g not in self.lexicon]
        if not self.concept_groups or unknown:
            raise ValueError(
                f"concept groups {list(self.concept_groups)} must be lexicon groups; "
                f"valid: {', '.join(self.lexicon)}"
            )
        bad = [
            g for g, ids in self.lexicon.items() if not ids or not all(0 <= i < len(self.vocab) for i in ids)
        ]
        if bad:
            raise ValueError(f"lexicon groups {bad} are empty or hold ids outside the vocabulary")

    @property
    def groups(self) -> list[str]:
        return list(self.lexicon)

    def membership(self) -> torch.Tensor:
        """[d_vocab, n_groups] bool: which groups each token belongs to."""
        m = torch.zeros(len(self.vocab), len(self.lexicon), dtype=torch.bool)
        for j, ids in enumerate(self.lexicon.values()):
            m[list(ids), j] = True
        return m


def interpretation_inputs(
    task: Task,
    n_documents: int = 600,
    n_finetune: int = 400,
    seed: int = 7,
    finetune_positions: str = "response",
    completions: dict[str, TokenDataset] | None = None,
) -> InterpretationInputs:
    """The allowed inputs from a task: ``n_documents`` generic pre-training documents (labels
    stripped), ``n_finetune`` fine-tuning examples (labels stripped; read at
    ``finetune_positions``), ``n_finetune`` pairs of the task's trait prompts (Persona Vectors'
    contrast), the lexicon, the concept description; optional ``completions`` of
    the models to generic prompts (read at all positions). The only function that reads a task
    for an interpreter: it never calls ``eval_prompts``, ``concept_directions``,
    ``concept_subspaces``, ``document_kinds`` or the judge."""
    index = task.vocab.index
    lexicon = {g: tuple(index[t] for t in toks) for g, toks in task.lexicon().items()}
    docs = unlabelled(task.sample_documents(n_documents, torch.Generator().manual_seed(seed)))
    ft = unlabelled(task.finetune_dataset(n_finetune, seed=seed + 1))
    evoke, suppress = task.trait_prompts(n_finetune, seed=seed + 2)
    datasets = {"documents": (docs, "all"), "finetune": (ft, finetune_positions)}
    datasets.update({name: (unlabelled(d), "all") for name, d in (completions or {}).items()})
    return InterpretationInputs(
        task.name,
        task.vocab,
        lexicon,
        task.concept_description,
        tuple(task.concept_groups),
        datasets,
        (unlabelled(evoke), unlabelled(suppress)),
    )
