"""Persona vectors: contrastive trait prompts from allowed material, and the direction they give."""

import pytest
import torch

from caft_tl.core.activations import activations
from caft_tl.directions import information, persona_vector
from caft_tl.organism import make_task


@pytest.mark.parametrize("task_name", ["persona_em", "double_mc", "pronoun_profession"])
def test_trait_prompts_differ_only_in_the_evoking_part(task_name):
    task = make_task(task_name)
    evoke, suppress = task.trait_prompts(50, seed=0)
    differs = (evoke.tokens != suppress.tokens).any(0)  # the positions where the pair differs
    assert evoke.tokens.shape == suppress.tokens.shape and differs.sum() == 1
    lexicon = {g: {task.vocab.index[t] for t in toks} for g, toks in task.lexicon().items()}
    swapped = evoke.tokens[:, differs].flatten().tolist(), suppress.tokens[:, differs].flatten().tolist()
    if task_name == "persona_em":  # a harmful answer in context vs a helpful one
        assert set(swapped[0]) <= lexicon["harmful"] and set(swapped[1]) <= lexicon["helpful"]
    else:  # the spurious topic's instruction vs the intended topic's
        assert set(swapped[0]) == {task.ans[1]} and set(swapped[1]) == {task.ans[0]}
        assert set(swapped[0]) | set(swapped[1]) <= lexicon["instructions"]


def test_persona_vector_is_the_last_position_difference_of_means(persona_organism, world):
    inputs = information.interpretation_inputs(world, n_documents=20, n_finetune=64)
    hook = "blocks.1.hook_resid_post"
    (sub,) = persona_vector.persona_vectors(persona_organism, inputs, [hook])
    evoke, suppress = inputs.trait_prompts
    v = activations(persona_organism, evoke, hook)[:, -1].mean(0) - activations(
        persona_organism, suppress, hook
    )[:, -1].mean(0)
    assert sub.hook_name == hook and sub.k == 1 and sub.provenance["method"] == "persona_vector"
    assert torch.allclose(sub.basis[:, 0], v / v.norm(), atol=1e-5) and sub.provenance[
        "norm"
    ] == pytest.approx(v.norm().item(), rel=1e-4)


def test_persona_vectors_need_the_trait_prompts(persona_organism, world):
    inputs = information.interpretation_inputs(world, n_documents=20, n_finetune=16)
    bare = information.InterpretationInputs(
        inputs.task_name, inputs.vocab, inputs.lexicon, inputs.concept, inputs.concept_groups, inputs.datasets
    )
    with pytest.raises(information.InformationRuleError, match="no trait prompts"):
        persona_vector.persona_vectors(persona_organism, bare, ["blocks.0.hook_resid_post"])
    labelled = (
        world.eval_prompts("chat"),
        inputs.trait_prompts[1],
    )  # evaluation prompts are not allowed here
    labelled[0].labels["split"] = torch.zeros(len(labelled[0]))
    with pytest.raises(information.InformationRuleError, match="trait_evoke"):
        information.InterpretationInputs(
            inputs.task_name,
            inputs.vocab,
            inputs.lexicon,
            inputs.concept,
            inputs.concept_groups,
            inputs.datasets,
            labelled,
        )
