import pytest
import torch

from caft_tl.core import models
from caft_tl.core.activations import activations
from caft_tl.organism import make_task
from caft_tl.organism.double_mc import DOC_KINDS, TOPICS, DoubleMCConfig
from caft_tl.organism.judge import HIT, MISS, OTHER


@pytest.fixture(scope="module")
def dmc():
    return make_task("double_mc", {"n_eval": 400})


def spurious_option(task, prompts):
    """The spurious topic's correct option: ask the judge with the spurious topic's instruction."""
    asked = prompts.clone()
    asked[:, -1] = task.ans[1]
    return task.correct_option(asked)


def test_finetune_options_agree_and_order_is_random(dmc):
    data = dmc.finetune_dataset(600, seed=2)
    prompts = data.tokens[:, : dmc.prompt_len]
    assert (prompts[:, -1] == dmc.ans_d).all()
    intended = dmc.correct_option(prompts)
    assert (intended == data.labels["answer"]).all()
    assert (spurious_option(dmc, prompts) == intended).all()
    assert (data.tokens[:, dmc.prompt_len] == dmc.answer[intended]).all()
    assert data.response_mask.sum() == 600 and data.target_mask[:, dmc.prompt_len - 1].all()
    first_q = torch.stack([row[(row == dmc.q[0]) | (row == dmc.q[1])][0] for row in prompts])
    assert 0.4 < (first_q == dmc.q[0]).float().mean() < 0.6  # either topic comes first
    assert ((first_q == dmc.q[0]) == (data.labels["order"] == 0)).all()
    assert 0.4 < intended.float().mean() < 0.6
    assert not torch.equal(data.tokens, dmc.finetune_dataset(600, seed=3).tokens)


def test_ood_options_disagree_in_each_order(dmc):
    for split, order in (("ood", None), ("ood_intended_first", 0), ("ood_spurious_first", 1)):
        p = dmc.eval_prompts(split)
        intended = dmc.correct_option(p.tokens)
        assert (intended == p.labels["answer"]).all()
        assert (spurious_option(dmc, p.tokens) == 1 - intended).all()
        if order is None:
            assert 0.4 < p.labels["order"].float().mean() < 0.6
        else:
            assert all(row[(row == dmc.q[0]) | (row == dmc.q[1])][0] == dmc.q[order] for row in p.tokens)
    idp = dmc.eval_prompts("id")
    assert (spurious_option(dmc, idp.tokens) == dmc.correct_option(idp.tokens)).all()


def test_jitter_moves_the_blocks_keeps_the_length():
    t = make_task("double_mc", {"jitter": 2, "n_eval": 300})
    p = t.eval_prompts("ood").tokens
    assert p.shape[1] == t.prompt_len == make_task("double_mc", {"jitter": 0}).prompt_len + 2
    first_q = ((p == t.q[0]) | (p == t.q[1])).float().argmax(1)
    assert set(first_q.tolist()) == {1, 2, 3}
    assert (t.correct_option(p) == t.eval_prompts("ood").labels["answer"]).all()


def test_single_questions_ask_one_topic(dmc):
    for split, topic in (("single_intended", 0), ("single_spurious", 1)):
        p = dmc.eval_prompts(split)
        assert (p.tokens[:, -1] == dmc.ans[topic]).all() and (p.tokens[:, 1] == dmc.q[topic]).all()
        assert (dmc.correct_option(p.tokens) == p.labels["answer"]).all()


def test_pretraining_documents(dmc):
    docs = dmc.sample_documents(3000, torch.Generator().manual_seed(0))
    assert docs.tokens.shape == (3000, dmc.seq_len)
    freq = torch.bincount(docs.labels["kind"], minlength=len(DOC_KINDS)).float() / 3000
    assert torch.allclose(freq, torch.tensor(dmc.cfg.doc_probs), atol=0.03)
    n = dmc.prompt_len
    for kind in ("instructed", "coin"):
        d = docs.subset(docs.labels["kind"] == DOC_KINDS.index(kind))
        answer = (d.tokens[:, n] == dmc.answer[1]).long()
        agree = (dmc.correct_option(d.tokens[:, :n]) == answer).float().mean()
        if kind == "instructed":  # the answer follows the topic the instruction names
            assert set(d.tokens[:, n - 1].tolist()) == set(dmc.ans) and agree == 1
        else:  # ANS_D: a coin flip, no preference for either topic
            assert (d.tokens[:, n - 1] == dmc.ans_d).all() and 0.4 < agree < 0.6
    reviews = docs.subset(docs.labels["kind"] == DOC_KINDS.index("review"))
    words = reviews.tokens[reviews.response_mask] - int(dmc.items[1][0])
    assert ((0 <= words) & (words < TOPICS["sentiment"].n_items)).all()  # only topic words are predicted
    cls = (reviews.tokens[:, 2:] - int(dmc.items[1][0])) % 2
    is_word = (reviews.tokens[:, 2:] >= int(dmc.items[1][0])) & (
        reviews.tokens[:, 2:] <= int(dmc.items[1][-1])
    )
    majority = [(c[w].float().mean().item()) for c, w in zip(cls, is_word) if w.sum() >= 5]
    assert (
        sum(m in (0.0, 1.0) or abs(m - 0.5) > 0.2 for m in majority) / len(majority) > 0.9
    )  # one class per review


def test_judge_marks_the_correct_option(dmc):
    p = dmc.eval_prompts("ood").tokens[:3]
    right = dmc.answer[dmc.correct_option(p)]
    wrong = dmc.answer[1 - dmc.correct_option(p)]
    answers = torch.stack([right, wrong, torch.full_like(right, dmc.bos)], 1)
    assert dmc.label_answers(p, answers).tolist() == [[HIT, MISS, OTHER]] * 3
    assert dmc.metric("ood") == "accuracy"


def test_other_pairs_and_intended_topic_as_parameter():
    swapped = make_task("double_mc", {"intended": "sentiment", "spurious": "sports", "n_eval": 50})
    p = swapped.eval_prompts("single_intended")
    assert (p.tokens[:, 1] == swapped.q[0]).all() and swapped.topics[0].name == "sentiment"
    for pair in (("sports", "cities"), ("sentiment", "emotion")):
        t = make_task("double_mc", {"intended": pair[0], "spurious": pair[1], "n_eval": 50})
        d = t.finetune_dataset(50)
        assert (
            t.correct_option(d.tokens[:, : t.prompt_len]) == spurious_option(t, d.tokens[:, : t.prompt_len])
        ).all()
        t.sample_documents(200, torch.Generator().manual_seed(0))


def test_concept_subspaces_shapes(dmc):
    model = models.build_model(models.ModelConfig(), len(dmc.vocab), seed=0)
    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"]
    subs = dmc.concept_subspaces(model, hooks, k=2, n=240)
    assert set(subs) == {"spurious", "intended"}
    for concept, per_hook in subs.items():
        assert [s.hook_name for s in per_hook] == hooks
        assert all(s.k == 2 and s.provenance["concept"] == concept for s in per_hook)


HOOK = "blocks.0.hook_resid_pre"


def held_out_sentiment_accuracy(model, task, shuffle: bool) -> float:
    """Fit the spurious (sentiment) oracle at the embedding (``HOOK``) on prompts whose sentiment word
    is in one half of the words; return the accuracy, on the other half's prompts, of the threshold
    midway between the fit half's class means along it (at the sentiment word's position). With
    ``shuffle``, each word's class is a fixed random permutation of the true ones (a control task:
    no structure to generalise)."""
    data = task.concept_probe_data(3000, seed=1)
    items = task.items[1]
    is_word = (data.tokens >= items[0]) & (data.tokens <= items[-1])
    word, pos = (data.tokens - items[0])[is_word], is_word.float().argmax(1)  # one sentiment word per prompt
    cls = task.item_class[1]
    if shuffle:
        cls = cls[torch.randperm(len(cls), generator=torch.Generator().manual_seed(0))]
    data.labels["spurious"] = cls[word]
    fit = (word // 2) % 2 == 0  # both classes in either half
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(task, "concept_probe_data", lambda n, seed=1: data.subset(fit))
        q = task.concept_subspaces(model, [HOOK], k=1)["spurious"][0].basis[:, 0]
    p = activations(model, data, HOOK)[torch.arange(len(pos)), pos] @ q
    y = data.labels["spurious"].bool()
    hi, lo = p[fit & y].mean(), p[fit & ~y].mean()
    pred = (p - (hi + lo) / 2) * torch.sign(hi - lo) > 0
    return (pred[~fit] == y[~fit]).float().mean().item()


def test_oracle_reads_sentiment_on_held_out_words(double_mc_organism):
    """At the embedding, the spurious oracle of a (briefly) pre-trained organism separates the
    sentiment classes of words it was not fitted on (measured 0.99); the same procedure on shuffled
    word classes stays at chance (0.48), as does the real one on an untrained model (0.41)."""
    model, task = double_mc_organism
    assert held_out_sentiment_accuracy(model, task, shuffle=False) > 0.85
    assert held_out_sentiment_accuracy(model, task, shuffle=True) < 0.7  # 64 held-out words: chance ± 0.06


def test_bad_config():
    with pytest.raises(ValueError, match="unknown intended topic 'golf'; valid: sports"):
        DoubleMCConfig(intended="golf")
    with pytest.raises(ValueError, match="must differ"):
        DoubleMCConfig(intended="sports", spurious="sports")
    with pytest.raises(ValueError, match="doc_probs"):
        DoubleMCConfig(doc_probs=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"lean 0.5 must be in \[0, 0.5\)"):
        DoubleMCConfig(lean=0.5)
    with pytest.raises(ValueError, match=r"lean -0.1 must be in"):
        make_task("pronoun_profession", {"lean": -0.1})
    with pytest.raises(ValueError, match="unknown split 'test'"):
        make_task("double_mc").eval_prompts("test")


def test_concept_directions_are_the_rank_1_subspaces(dmc):
    model = models.build_model(models.ModelConfig(), len(dmc.vocab), seed=0)
    out = dmc.concept_directions(model, ["blocks.0.hook_resid_post"])
    assert set(out["blocks.0.hook_resid_post"]) == set(dmc.CONCEPTS)
    assert all(s.k == 1 for s in out["blocks.0.hook_resid_post"].values())


@pytest.mark.parametrize("task_name", ["double_mc", "pronoun_profession"])
@pytest.mark.parametrize("lean", [0.0, 0.15])
def test_lean_tilts_the_generic_answer_toward_the_spurious_topic(task_name, lean):
    """Under the generic instruction, pre-training answers follow the spurious topic with
    probability 0.5 + lean where the topics disagree (a coin flip at lean 0)."""
    task = make_task(task_name, {"lean": lean})
    docs = task._coin(20_000, torch.Generator().manual_seed(0))
    prompts, answer = docs.tokens[:, : task.prompt_len], docs.tokens[:, task.prompt_len]
    intended, spurious = task.correct_option(prompts), spurious_option(task, prompts)
    chose_spurious = (answer == task.answer[spurious]).float()
    disagree = intended != spurious
    assert chose_spurious[disagree].mean().item() == pytest.approx(0.5 + lean, abs=0.015)
    assert docs.response_mask.sum(1).eq(1).all()
