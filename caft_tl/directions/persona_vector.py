"""Persona vectors (Chen et al. 2025): a trait direction from contrastive prompts, not from a fine-tune.

The difference of the base model's mean activation at the answer-writing (last) position between
prompts that evoke the unwanted behaviour and the same prompts with the evoking part swapped for
one that suppresses it (:meth:`caft_tl.organism.task.Task.trait_prompts`), at each hook. It reads
only :class:`~caft_tl.directions.information.InterpretationInputs` (the information rule), so it
can be compared with the diffing-derived directions as CAFT's subspace and used for ``add`` —
preventative steering proper, with a vector the model may never have learned in fine-tuning.
"""

from __future__ import annotations

from transformer_lens import HookedTransformer

from caft_tl.core.activations import activations
from caft_tl.core.subspace import Subspace, diff_of_means
from caft_tl.directions.information import InformationRuleError, InterpretationInputs


def persona_vectors(
    model: HookedTransformer, inputs: InterpretationInputs, hooks: list[str]
) -> list[Subspace]:
    """One rank-1 subspace per hook along mean(evoke) − mean(suppress) at the last position; the
    vector's norm is in the provenance (``norm``), its direction is the basis."""
    if inputs.trait_prompts is None:
        raise InformationRuleError(
            f"no trait prompts in the interpretation inputs of {inputs.task_name!r}: "
            "build them with interpretation_inputs()"
        )
    evoke, suppress = inputs.trait_prompts
    out = []
    for hook in hooks:
        a = activations(model, evoke, hook)[:, -1]  # [n, d_model]
        b = activations(model, suppress, hook)[:, -1]
        sub = diff_of_means(a, b, hook, label="persona_vector")
        out.append(Subspace(hook, sub.basis, sub.labels, {**sub.provenance, "method": "persona_vector"}))
    return out
