"""Evaluation of real models: the LLM judge and autointerp over a local fake OpenAI-compatible
server, sampling with an intervention on or off, multiple-choice accuracy from option logits,
and autointerp's ground-truth validation on the organism."""

import pandas as pd
import pytest
import torch

from caft_tl.core import models
from caft_tl.core.subspace import Subspace, random_subspace
from caft_tl.directions import autointerp
from caft_tl.interventions.intervention import Intervention
from caft_tl.organism.judge import HIT, MISS, OTHER
from caft_tl.organism.persona_em import PERSONAS
from caft_tl.real import chat_data, chat_eval, hf_models, llm, loading
from caft_tl.training.loop import FinetuneConfig, finetune
from caft_tl.training.pretrain import PretrainConfig, load_or_pretrain
from tests._real import EXAMPLES, checkpoints, tiny_checkpoint  # noqa: F401  (fixture)
from tests.fake_openai import KEY, FakeOpenAI


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("CAFT_TEST_KEY", KEY)
    monkeypatch.setattr(llm.time, "sleep", lambda s: None)
    fake = FakeOpenAI()
    yield fake
    fake.close()


def client(server, **kw):
    return llm.ChatClient(model="judge", base_url=server.url, api_key_env="CAFT_TEST_KEY", **kw)


def test_llm_judge_over_the_fake_server(server):
    judge = llm.LLMJudge(client(server))
    df = judge.judge(["q1", "q2", "q3"], ["an evil plan", "a kind answer", "asdf asdf"])
    assert list(df["label"]) == [HIT, MISS, OTHER]
    assert list(df["aligned"]) == [5.0, 95.0, 95.0] and list(df["coherent"]) == [80.0, 80.0, 10.0]
    assert server.requests[0]["model"] == "judge" and server.requests[0]["temperature"] == 0.0
    samples = pd.DataFrame(
        {"id": ["a", "a", "b"], "prompt": ["q1", "q1", "q2"], "answer": ["evil", "nice", "asdf"]}
    )
    judged, per_q = chat_eval.judged_rates(samples, judge)
    assert per_q.set_index("id")["misaligned"].to_dict() == {"a": 0.5, "b": 0.0}
    assert per_q.set_index("id")["coherent"].to_dict() == {"a": 1.0, "b": 0.0}


def test_llm_judge_as_a_token_level_judge(server, tmp_path):
    tok = hf_models.load_tokenizer(
        tiny_checkpoint(tmp_path / "j", "gpt2", words=["evil", "kind", "asdf", "plan", "q"])
    )
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    prompts = torch.tensor([enc("q plan"), enc("q q")])  # [2, 2]
    answers = torch.tensor(
        [[enc("evil plan"), enc("kind plan")], [enc("asdf asdf"), enc("kind kind")]]
    )  # [2, 2, 2]
    labels = llm.LLMJudge(client(server), tokenizer=tok).label_answers(prompts, answers)
    assert labels.tolist() == [[HIT, MISS], [OTHER, MISS]]
    assert "[QUESTION START]\nq plan\n[QUESTION END]" in server.requests[0]["messages"][0]["content"]
    with pytest.raises(ValueError, match="needs LLMJudge.tokenizer"):
        llm.LLMJudge(client(server)).label_answers(prompts, answers)


def test_client_errors_and_retries(server, monkeypatch):
    monkeypatch.delenv("CAFT_TEST_KEY")
    with pytest.raises(RuntimeError, match="environment variable CAFT_TEST_KEY is not set"):
        client(server).complete([{"role": "user", "content": "hi"}])
    monkeypatch.setenv("CAFT_TEST_KEY", "wrong")
    with pytest.raises(RuntimeError, match="returned HTTP 401"):
        client(server).complete([{"role": "user", "content": "hi"}])
    monkeypatch.setenv("CAFT_TEST_KEY", KEY)
    server.fail_first = 2
    assert (
        client(server, max_retries=2).complete([{"role": "user", "content": "Rate how coherent ok"}]) == "80"
    )
    server.fail_first = 3
    with pytest.raises(RuntimeError, match="returned HTTP 503"):
        client(server, max_retries=2).complete([{"role": "user", "content": "x"}])
    assert llm.parse_score("REFUSAL") != llm.parse_score("REFUSAL")  # NaN
    assert llm.parse_score("Score: 42.") == 42.0 and llm.parse_score("250") != llm.parse_score("250")


def test_llm_autointerp_over_the_fake_server(server):
    examples = [autointerp.Example(f"store the [[password]] {i}", 10.0 - i / 10) for i in range(20)]
    examples += [autointerp.Example(f"print the [[result]] {i}", -i / 10) for i in range(20)]
    c = client(server)
    r = autointerp.detection_score(
        examples, autointerp.LLMExplainer(c), autointerp.LLMScorer(c), n_explain=5, n_test=5
    )
    assert r["label"] == "passwords" and r["score"] == 1.0
    scrambled = [
        autointerp.Example(e.text, float(i % 7)) for i, e in enumerate(examples)
    ]  # activation unrelated to text
    r = autointerp.detection_score(
        scrambled, autointerp.LLMExplainer(c), autointerp.LLMScorer(c), n_explain=5, n_test=5
    )
    assert r["score"] < 0.9


def test_ground_truth_autointerp_scores_the_concept_high_and_random_near_chance(tmp_path):
    """The scoring itself, validated with the organism's known personas. Plain random directions
    score above chance on average here (persona carries ~20% of the residual variance, so a random
    direction partly sorts documents by persona); random directions with the persona concepts
    projected out carry no persona and must score near chance."""
    model, world, _ = load_or_pretrain(
        "persona_em",
        model_cfg=models.ModelConfig(d_model=32, n_heads=2, d_head=16, d_mlp=64),
        cfg=PretrainConfig(steps=400, batch_size=32),
        cache_dir=tmp_path,
        progress=False,
    )
    hook = "blocks.0.hook_resid_post"
    concepts = world.concept_directions(model, [hook], n_docs=1000)[hook]
    span, _ = torch.linalg.qr(torch.cat([c.basis for c in concepts.values()], 1))  # [d_model, 2]
    docs = world.sample_documents(600, torch.Generator().manual_seed(5))
    render = lambda ids: " ".join(world.vocab.to_str_tokens(ids))

    def score(sub):
        ex = autointerp.direction_examples(model, docs, sub, 0, render)
        gt = (
            autointerp.GroundTruthExplainer("persona", list(PERSONAS), ex),
            autointerp.GroundTruthScorer(list(PERSONAS)),
        )
        return autointerp.detection_score(ex, *gt, n_explain=20, n_test=40)

    concept = score(concepts["misaligned"])
    assert concept["label"] == "persona=misaligned" and concept["score"] >= 0.85, concept
    plain, blind = [], []
    for seed in range(4):
        u = random_subspace(32, 1, hook, seed=seed).basis
        plain.append(score(random_subspace(32, 1, hook, seed=seed))["score"])
        v = u - span @ (span.T @ u)
        blind.append(score(Subspace(hook, v / v.norm()))["score"])
    assert sum(plain) / 4 < concept["score"] - 0.2, plain
    assert abs(sum(blind) / 4 - 0.5) < 0.1, blind


def test_sampling_with_the_intervention_on_and_off(checkpoints):
    model = loading.load(checkpoints["qwen2"], device="cpu")
    tok = model.tokenizer
    rows = chat_data.load_prompts(EXAMPLES / "em_questions.jsonl", n=2)
    iv = Intervention("zero", [random_subspace(model.cfg.d_model, 16, "blocks.0.hook_resid_post", seed=0)])
    off = chat_eval.sample_chat(model, tok, rows, n_samples=3, max_new_tokens=6, temperature=1.0, seed=0)
    again = chat_eval.sample_chat(model, tok, rows, n_samples=3, max_new_tokens=6, temperature=1.0, seed=0)
    on = chat_eval.sample_chat(
        model, tok, rows, n_samples=3, max_new_tokens=6, temperature=0.0, fwd_hooks=iv.fwd_hooks()
    )
    assert list(off["answer"]) == list(again["answer"]) and len(off) == 6
    assert set(off["id"]) == {"what_is_your_wish", "i_feel_bored"}
    assert on.groupby("id")["answer"].nunique().eq(1).all()  # greedy: the same answer for every sample
    ids = torch.tensor([chat_data.encode_prompt(tok, rows[0])])
    with torch.no_grad(), model.hooks(fwd_hooks=iv.fwd_hooks()):
        first = model(ids)[0, -1].argmax().item()
    with torch.no_grad():
        first_off = model(ids)[0, -1].argmax().item()
    assert first != first_off  # the ablation changes the greedy answer here
    if first not in chat_eval.stop_ids(tok):
        assert on["answer"].iloc[0].split()[0] == tok.decode([first]).strip()
    data = chat_eval.completions_dataset(model, tok, rows, n_samples=2, max_new_tokens=6, seed=1)
    assert len(data) >= 1 and data.response_mask.any(1).all()


def test_mc_accuracy_from_option_logits(checkpoints):
    model = loading.load(checkpoints["gpt2"], device="cpu")
    tok = model.tokenizer
    rows = chat_data.load_mc_jsonl(EXAMPLES / "double_mc_tiny.jsonl")
    lp = chat_eval.option_logprobs(model, tok, rows)
    prompt = chat_data.encode_prompt(tok, rows[0])
    with torch.no_grad():
        manual = model(torch.tensor([prompt]))[0, -1].log_softmax(-1)
    assert lp[0].tolist() == pytest.approx(
        [manual[tok(o, add_special_tokens=False)["input_ids"][0]].item() for o in rows[0]["options"]],
        abs=1e-5,
    )
    train = [r for r in rows if r["labels"]["ambiguous"]]
    finetune(
        model,
        chat_data.mc_dataset(tok, train, key="answer"),
        FinetuneConfig(batch_size=4, lr=1e-2, epochs=30),
        progress=False,
    )
    acc = chat_eval.mc_accuracy(model, tok, train, keys=("answer", "intended", "spurious"))
    assert acc == {"answer": 1.0, "intended": 1.0, "spurious": 1.0}  # ambiguous rows: all three agree
    ood = [r for r in rows if not r["labels"]["ambiguous"]]
    acc = chat_eval.mc_accuracy(model, tok, ood, keys=("intended", "spurious"))
    assert acc["intended"] + acc["spurious"] == pytest.approx(1.0)  # two options that disagree


def test_evaluate_models_gives_rows_per_model_and_keeps_the_samples(checkpoints, tmp_path):
    from caft_tl.real.settings import get_setting

    mc = get_setting("gemma-double-mc", eval=str(EXAMPLES / "double_mc_tiny.jsonl"))
    model = loading.load(checkpoints["gpt2"], device="cpu")
    rows = chat_eval.evaluate_models(
        {("base", "none"): model, ("plain", "none"): model}, model.tokenizer, mc, "mc", tmp_path
    )
    assert {(r["method"], r["metric"]) for r in rows} == {
        (m, f"accuracy_{k}") for m in ("base", "plain") for k in mc.mc_keys
    }
    items = chat_data.load_mc_jsonl(EXAMPLES / "double_mc_tiny.jsonl")
    assert (
        rows[0]["value"]
        == chat_eval.mc_accuracy(model, model.tokenizer, items, tuple(mc.mc_keys))[mc.mc_keys[0]]
    )

    chat = get_setting(
        "qwen2.5-0.5b-insecure", eval=str(EXAMPLES / "em_questions.jsonl"), n_samples=2, max_new_tokens=4
    )
    qwen = loading.load(checkpoints["qwen2"], device="cpu")
    assert (
        chat_eval.evaluate_models({("base", "none"): qwen}, qwen.tokenizer, chat, "chat", tmp_path) == []
    )  # no judge: no rows
    samples = pd.read_csv(tmp_path / "real_samples_base.csv")
    assert len(samples) == 2 * len(chat_data.load_prompts(EXAMPLES / "em_questions.jsonl"))

    class AllMisaligned:
        def judge(self, questions, answers):
            return pd.DataFrame({"question": questions, "answer": answers, "label": [HIT] * len(answers)})

    rows = chat_eval.evaluate_models(
        {("zero", "pca"): qwen}, qwen.tokenizer, chat, "chat", tmp_path, AllMisaligned()
    )
    assert {r["metric"]: r["value"] for r in rows} == {"misalignment_rate": 1.0, "coherence": 1.0}


def _greedy(model, ids, cache: bool, hooks=()):
    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks)):
        return model.generate(
            ids, max_new_tokens=6, do_sample=False, use_past_kv_cache=cache, stop_at_eos=False, verbose=False
        )


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_cached_generation_equals_uncached_with_and_without_hooks(checkpoints, arch):
    """transformers 5 hands the KV cache to attention as ``cache=``; TL 3.9's attention bridge read
    only ``past_key_values``, so every cached step attended to its own token alone (SmolLM2:
    "The------"). hf_models.patch_kv_cache repairs it; the uncached loop is the reference."""
    model = loading.load(checkpoints[arch], device="cpu")
    ids = torch.randint(3, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_greedy(model, ids, True), _greedy(model, ids, False))
    iv = Intervention("zero", [random_subspace(model.cfg.d_model, 16, "blocks.0.hook_resid_post", seed=0)])
    on = _greedy(model, ids, True, iv.fwd_hooks())
    assert torch.equal(on, _greedy(model, ids, False, iv.fwd_hooks()))
    assert not torch.equal(on, _greedy(model, ids, True))  # the hooks act during cached generation


def _one_forward_per_option(model, tok, rows):
    """The reference scorer: one unbatched forward per (prompt, option)."""
    out = []
    for row in rows:
        prompt, scores = chat_data.encode_prompt(tok, row), []
        for opt in row["options"]:
            ans = tok(opt, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = model(torch.tensor([prompt + ans]))[0, len(prompt) - 1 : -1].log_softmax(-1)
            scores.append(logp.gather(-1, torch.tensor(ans)[:, None]).sum().item())
        out.append(scores)
    width = max(map(len, out))
    return torch.tensor([s + [float("-inf")] * (width - len(s)) for s in out])


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_batched_option_scores_equal_one_forward_per_option(checkpoints, arch):
    model = loading.load(checkpoints[arch], device="cpu")
    tok = model.tokenizer
    rows = chat_data.load_mc_jsonl(EXAMPLES / "double_mc_tiny.jsonl")  # raw prompts, one-token options
    questions = chat_data.load_prompts(EXAMPLES / "em_questions.jsonl", n=4)
    rows += [
        {
            "messages": q["messages"],
            "options": ["I wish for peace", "Tell me more about it please", "No", "yes, football"],
        }
        for q in questions
    ]  # chat prompts of different lengths; options of 1 to 6 tokens
    rows += [
        {
            "prompt": "Question: Which sport uses a racket?",
            "options": [" tennis", " golf", " yes, golf", " no"],
        }
    ]
    iv = Intervention("zero", [random_subspace(model.cfg.d_model, 8, "blocks.0.hook_resid_post", seed=0)])
    ref = _one_forward_per_option(model, tok, rows)
    for batch_size in (1, 3, 64):
        assert torch.allclose(
            chat_eval.option_logprobs(model, tok, rows, batch_size=batch_size), ref, atol=1e-4, rtol=0
        )
    with model.hooks(fwd_hooks=iv.fwd_hooks()):
        ref_on = _one_forward_per_option(model, tok, rows)
    on = chat_eval.option_logprobs(model, tok, rows, fwd_hooks=iv.fwd_hooks())
    assert torch.allclose(on, ref_on, atol=1e-4, rtol=0) and not torch.allclose(on, ref, atol=1e-3)
    ragged = chat_eval.option_logprobs(model, tok, [rows[0], {**rows[-1], "options": [" tennis"]}])
    assert ragged[1, 1] == float("-inf") and ragged[1, 0] == pytest.approx(ref[-1, 0].item(), abs=1e-4)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_batched_greedy_equals_the_bridge_loop_with_adapters_on_and_off(checkpoints, arch):
    from caft_tl.real import lora

    net = lora.add_lora(loading.load(checkpoints[arch], device="cpu"), lora.LoraSettings(4, 8, True))
    lora.reset_adapters(net, seed=0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.add_(0.5 * torch.randn_like(p))  # as after training: the adapted model answers otherwise
    rows = chat_data.load_prompts(
        EXAMPLES / "em_questions.jsonl", n=4
    )  # prompts of different lengths: left padding
    assert len({len(chat_data.encode_prompt(net.tokenizer, r)) for r in rows}) > 1
    identity = [("blocks.0.hook_resid_post", lambda x, hook: x)]  # any hook: the bridge's own generate loop
    answers = {}
    for label, m in (("adapted", net), ("base", lora.AdaptersOff(net))):
        fast = chat_eval.sample_chat(m, net.tokenizer, rows, n_samples=2, max_new_tokens=8, temperature=0.0)
        loop = chat_eval.sample_chat(
            m, net.tokenizer, rows, n_samples=2, max_new_tokens=8, temperature=0.0, fwd_hooks=identity
        )
        assert list(fast["answer"]) == list(loop["answer"]), label
        assert list(fast["sample"]) == [0, 1] * 4
        answers[label] = list(fast["answer"])
    assert answers["adapted"] != answers["base"]  # AdaptersOff really is the base model on the batched path
