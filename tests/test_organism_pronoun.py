import hashlib

import pytest
import torch

from caft_tl.core import models
from caft_tl.organism import make_task
from caft_tl.organism.double_mc import DoubleMCConfig
from caft_tl.organism.judge import HIT, MISS, OTHER
from caft_tl.organism.pronoun_profession import DOC_KINDS, PronounProfessionConfig
from caft_tl.runner import gate_search


@pytest.fixture(scope="module")
def pp():
    return make_task("pronoun_profession", {"n_eval": 400})


def gender(task, prompts, topic):
    """[n] the class (0 female) of each prompt's item of ``topic`` (0 name, 1 profession)."""
    items = task.items[topic]
    out = []
    for row in prompts:
        hit = (row >= items[0]) & (row <= items[-1])
        assert hit.sum() == 1
        out.append(int(task.item_class[topic][row[hit][0] - items[0]]))
    return torch.tensor(out)


def test_prompt_layout(pp):
    p = pp.eval_prompts("ood").tokens[:200]
    text = pp.vocab.decode(p[0]).split()
    assert text[0] == "<bos>" and text[-1] == "PRON_Q" and len(text) == pp.prompt_len == 2 + 4 + pp.cfg.jitter
    for row in p:  # each marker is followed by its item
        for topic in (0, 1):
            j = row.tolist().index(pp.q[topic])
            assert pp.items[topic][0] <= row[j + 1] <= pp.items[topic][-1]


def test_id_genders_agree_ood_disagree_and_name_decides(pp):
    ft = pp.finetune_dataset(500, seed=1)
    prompts = ft.tokens[:, : pp.prompt_len]
    name, prof = gender(pp, prompts, 0), gender(pp, prompts, 1)
    assert (name == prof).all() and (name == ft.labels["answer"]).all()
    assert (ft.tokens[:, pp.prompt_len] == pp.answer[name]).all()
    assert 0.4 < name.float().mean() < 0.6
    for split in ("id", "ood", "ood_intended_first", "ood_spurious_first"):
        p = pp.eval_prompts(split)
        name, prof = gender(pp, p.tokens, 0), gender(pp, p.tokens, 1)
        assert (name == p.labels["answer"]).all() and (pp.correct_option(p.tokens) == name).all()
        assert (name == prof).all() if split == "id" else (name != prof).all()


def test_question_order_is_balanced_and_per_order_splits_fix_it(pp):
    def name_first(prompts):
        return torch.tensor([row.tolist().index(pp.q[0]) < row.tolist().index(pp.q[1]) for row in prompts])

    ft = pp.finetune_dataset(600, seed=2)
    first = name_first(ft.tokens[:, : pp.prompt_len])
    assert 0.4 < first.float().mean() < 0.6 and (first == (ft.labels["order"] == 0)).all()
    assert 0.4 < name_first(pp.eval_prompts("ood").tokens).float().mean() < 0.6
    assert name_first(pp.eval_prompts("ood_intended_first").tokens).all()
    assert not name_first(pp.eval_prompts("ood_spurious_first").tokens).any()


def test_judge_labels_the_names_pronoun_hit(pp):
    p = pp.eval_prompts("ood").tokens[:4]
    name_pronoun = pp.answer[gender(pp, p, 0)]
    prof_pronoun = pp.answer[gender(pp, p, 1)]
    answers = torch.stack(
        [name_pronoun, prof_pronoun, torch.full_like(name_pronoun, pp.vocab.index["female"])], 1
    )
    assert pp.label_answers(p, answers).tolist() == [[HIT, MISS, OTHER]] * 4
    assert {pp.vocab.tokens[int(a)] for a in pp.answer} == {"she", "he"}
    singles = pp.eval_prompts("single_spurious").tokens  # a single question asks its own topic
    assert (pp.correct_option(singles) == gender(pp, singles, 1)).all()


def test_pretraining_documents(pp):
    docs = pp.sample_documents(4000, torch.Generator().manual_seed(0))
    assert pp.document_kinds(docs)[:5] == [DOC_KINDS[k] for k in docs.labels["kind"][:5].tolist()]
    n = pp.prompt_len
    for kind in ("instructed", "coin"):
        d = docs.subset(docs.labels["kind"] == DOC_KINDS.index(kind))
        pronoun = (d.tokens[:, n] == pp.answer[1]).long()
        agree = (pp.correct_option(d.tokens[:, :n]) == pronoun).float().mean()
        if kind == "instructed":  # the pronoun follows the topic the instruction names
            assert set(d.tokens[:, n - 1].tolist()) == set(pp.ans) and agree == 1
        else:  # PRON_Q: a coin flip, or (probability 2 · lean) the profession's pronoun
            assert (d.tokens[:, n - 1] == pp.ans_d).all()
            for topic, expected in ((0, 0.5), (1, 0.5 + pp.cfg.lean)):
                assert (
                    abs((gender(pp, d.tokens[:, :n], topic) == pronoun).float().mean() - expected) < 0.08
                )  # ±4 sd of ~600 flips
    corpus = docs.subset(docs.labels["kind"] == DOC_KINDS.index("corpus"))
    assert not ((corpus.tokens >= pp.items[0][0]) & (corpus.tokens <= pp.items[0][-1])).any()  # no names
    prof = (corpus.tokens >= pp.items[1][0]) & (corpus.tokens <= pp.items[1][-1])
    pron = (corpus.tokens == pp.corpus_pronoun[0]) | (
        corpus.tokens == pp.corpus_pronoun[1]
    )  # her / his by default
    assert (corpus.response_mask <= (prof | pron)).all()  # only professions and pronouns are predicted
    # professions and pronouns of one document share its gender (purity 0.9)
    g = torch.where(
        prof, (corpus.tokens - pp.items[1][0]) % 2, (corpus.tokens == pp.corpus_pronoun[1]).long()
    )
    majority = [g[i][m].float().mean().item() for i, m in enumerate(prof | pron) if m.sum() >= 5]
    assert sum(abs(x - 0.5) > 0.2 for x in majority) / len(majority) > 0.85
    assert torch.bincount(g[prof | pron]).min() > 0.4 * (prof | pron).sum()  # both genders
    for topic in (0, 1):  # facts state each item's gender
        f = docs.subset(docs.labels["kind"] == DOC_KINDS.index("fact"))
        f = f.subset(f.tokens[:, 1] == pp.q[topic])
        assert (f.tokens[:, 4] == pp.classes[topic][gender(pp, f.tokens[:, 1:3], topic)]).all()


def test_concepts_and_gates_run_on_the_task(pp, tmp_path):
    task = make_task("pronoun_profession", {"n_eval": 40})
    base = models.build_model(models.ModelConfig(), len(task.vocab), seed=0)
    subs = task.concept_subspaces(base, ["blocks.0.hook_resid_pre"], k=1, n=240)
    assert set(subs) == {"spurious", "intended"} and subs["spurious"][0].k == 1
    cfg = gate_search.GateConfig(task="pronoun_profession", seeds=[0], n_examples=32)
    rows = gate_search.gate_rows(base, task, tmp_path, cfg, organism="pronoun_profession-s0-test")
    assert {r["task"] for r in rows} == {"pronoun_profession"} and {r["split"] for r in rows} == set(
        task.eval_splits
    )


def test_separate_genders_share_only_the_pronouns():
    """The separable design: a profession's fact names its stereotype with its own words; the names'
    facts, the prompts and the answers (she / he) are the default design's."""
    sep = make_task("pronoun_profession", {"n_eval": 40})  # the default design
    shared = make_task("pronoun_profession", {"separate_genders": False, "n_eval": 40})
    words = lambda t, topic: [t.vocab.tokens[i] for i in t.classes[topic].tolist()]
    assert words(shared, 0) == words(shared, 1) == ["female", "male"]
    assert words(sep, 0) == ["female", "male"] and words(sep, 1) == ["feminine_coded", "masculine_coded"]
    assert sep.concept_groups == ("feminine_coded", "masculine_coded")
    docs = sep.sample_documents(2000, torch.Generator().manual_seed(0))
    facts = docs.subset(docs.labels["kind"] == DOC_KINDS.index("fact"))
    for topic in (0, 1):
        f = facts.subset(facts.tokens[:, 1] == sep.q[topic])
        assert len(f) > 50 and set(f.tokens[:, 4].tolist()) == set(sep.classes[topic].tolist())
    assert [sep.vocab.tokens[i] for i in sep.answer.tolist()] == ["she", "he"]
    with pytest.raises(ValueError, match="separate_genders must be true or false"):
        PronounProfessionConfig(separate_genders="yes")


def test_own_corpus_pronouns_never_answer():
    """With ``own_corpus_pronouns`` the biased corpus's pronouns are her / his, never an answer token,
    and agree with the document's professions as she / he do by default; the prompts are unchanged."""
    own = make_task("pronoun_profession", {"n_eval": 40})  # the default design
    assert [own.vocab.tokens[i] for i in own.corpus_pronoun.tolist()] == ["her", "his"]
    corpus = own._reviews(400, torch.Generator().manual_seed(0))
    answers = (corpus.tokens == own.answer[0]) | (corpus.tokens == own.answer[1])
    pron = (corpus.tokens == own.corpus_pronoun[0]) | (corpus.tokens == own.corpus_pronoun[1])
    assert not answers.any() and pron.sum() > 400
    prof = (corpus.tokens >= own.items[1][0]) & (corpus.tokens <= own.items[1][-1])
    prof_gender = (corpus.tokens - own.items[1][0]) % 2
    pron_gender = (corpus.tokens == own.corpus_pronoun[1]).long()
    # within a document, a profession and a pronoun share its gender: p² + (1 − p)² = 0.82 at purity 0.9,
    # 0.5 if unrelated
    agree = [
        (prof_gender[i][prof[i]][:, None] == pron_gender[i][pron[i]][None]).float()
        for i in range(len(corpus))
    ]
    assert torch.cat([a.flatten() for a in agree]).mean() > 0.75
    answers = make_task("pronoun_profession", {"own_corpus_pronouns": False, "n_eval": 40})
    assert torch.equal(answers.corpus_pronoun, answers.answer) and "her" not in answers.vocab.tokens
    with pytest.raises(ValueError, match="own_corpus_pronouns must be true or false"):
        PronounProfessionConfig(own_corpus_pronouns=1)


def test_bad_config():
    with pytest.raises(ValueError, match="n_professions must be an even number"):
        PronounProfessionConfig(n_professions=3)
    with pytest.raises(ValueError, match="doc_probs"):
        PronounProfessionConfig(doc_probs=(1.0, 0.0))
    with pytest.raises(ValueError, match="corpus_purity"):
        PronounProfessionConfig(corpus_purity=1.5)


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


def test_double_mc_unchanged():
    """Golden hashes of the double_mc world's vocabulary and random draws (pre-training documents,
    fine-tuning set, OOD prompts), as computed before pronoun_profession reused its code.

    What they protect: cached checkpoints are named by a config hash and organisms by their
    pre-training seed; both stay valid only while the same config and seed give the same tokens. A
    refactor that keeps the distribution but reorders the vocabulary or the generator's calls passes
    every property test and silently trains another organism; only exact draws catch that. The draws
    are integers from torch's CPU generator (not floats), so they are the same on every machine with
    the pinned torch. ``lean`` 0 is the design before the lean existed (its draws are unchanged); the
    default lean (0.1) draws one more number per ``ANS_D`` document. If a change is meant to alter
    the organism, update the hashes and re-measure the README's double_mc results."""
    t = make_task("double_mc", DoubleMCConfig(jitter=2, n_eval=200, lean=0.0))
    assert (
        hashlib.sha256(" ".join(t.vocab.tokens).encode()).hexdigest()[:16] == "ec1e6ee38aaf1eb2"
        and len(t.vocab) == 195
    )
    assert _digest(t.sample_documents(256, torch.Generator().manual_seed(0)).tokens) == "71f82681a706a2f2"
    assert (
        _digest(make_task("double_mc").sample_documents(256, torch.Generator().manual_seed(0)).tokens)
        == "649a9e01e0f5eac0"
    )
    assert _digest(t.finetune_dataset(128, seed=1).tokens) == "58f1714a38456d1d"
    assert _digest(t.eval_prompts("ood").tokens) == "c66fae2b9814ea44"
