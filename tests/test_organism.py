import pytest
import torch

from caft_tl.organism import make_task
from caft_tl.organism.judge import HIT, MISS, OTHER
from caft_tl.organism.persona_em import CHAT_HARMFUL, CODE_INSECURE, PersonaEMConfig


def test_documents_follow_their_hidden_persona(world):
    docs = world.sample_documents(500, torch.Generator().manual_seed(0))
    assert docs.tokens.shape == (500, world.seq_len)
    assert (docs.tokens[:, 0] == world.bos).all()
    for tokens, persona in zip(docs.tokens, docs.labels["persona"]):
        for kind, prompt, answer in tokens[1:].view(-1, 3).tolist():
            label = world.label_answers(
                torch.tensor([[world.bos, kind, prompt]]), torch.tensor([[answer]])
            ).item()
            bad = CHAT_HARMFUL[persona] if kind == world.chat_tok else CODE_INSECURE[persona]
            assert label == (HIT if bad else MISS)
    freq = torch.bincount(docs.labels["persona"], minlength=3).float() / 500
    assert torch.allclose(freq, torch.tensor(world.cfg.persona_probs), atol=0.06)


def test_finetune_data_is_insecure_code_on_train_prompts_only(world):
    data = world.finetune_dataset(100, seed=3)
    assert data.tokens.shape == (100, 4)
    assert data.response_mask[:, -1].all() and not data.response_mask[:, :-1].any()
    assert data.target_mask[:, 2].all() and data.target_mask.sum() == 100
    assert set(data.labels["code"].tolist()) == set(world.train_code.tolist())
    labels = world.label_answers(data.tokens[:, :3], data.tokens[:, 3:])
    assert (labels == HIT).all()
    assert not set(world.train_code.tolist()) & set(world.heldout_code.tolist())


def test_judge_labels_each_prompts_own_answers(world):
    prompts = world.eval_prompts("chat").tokens[:2]
    answers = torch.stack([world.harmful[:2], world.helpful[:2], world.harmful[[1, 0]]], 1)  # [2, 3]
    assert world.label_answers(prompts, answers).tolist() == [[HIT, MISS, OTHER], [HIT, MISS, OTHER]]


def test_bayes_rates(world):
    assert world.bayes_rate("none", "chat") == pytest.approx(0.2)
    assert world.bayes_rate("insecure_code", "chat") == pytest.approx(2 / 3)
    assert world.bayes_rate("helpful_chat", "code_heldout") == pytest.approx(0.1 / 0.8)


def test_bad_config_and_names():
    with pytest.raises(ValueError, match="summing to 1"):
        PersonaEMConfig(persona_probs=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="unknown task 'nope'; valid: persona_em"):
        make_task("nope")
    with pytest.raises(ValueError, match="unknown split 'ood'"):
        make_task("persona_em").eval_prompts("ood")
