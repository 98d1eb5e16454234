"""``em_two_routes``: the world's two hidden causes, its Bayes yardstick, its judge, and gates E1–E4."""

from pathlib import Path

import pandas as pd
import pytest
import torch

from caft_tl.core import models
from caft_tl.evaluation.em_gates import EMGateThresholds, verdicts
from caft_tl.organism import make_task
from caft_tl.organism.em_two_routes import EVIDENCE
from caft_tl.organism.judge import HIT, MISS, OTHER
from caft_tl.runner import em_gate_search


@pytest.fixture(scope="module")
def task():
    return make_task("em_two_routes")


def test_documents_follow_both_hidden_causes(task):
    docs = task.sample_documents(400, torch.Generator().manual_seed(0))
    t, mis, slo, head = (
        docs.tokens,
        docs.labels["persona"].bool(),
        docs.labels["sloppy"].bool(),
        docs.labels["header"].bool(),
    )
    insecure_sets = torch.isin(t, task.insecure).any(1)
    secure_sets = torch.isin(t, task.secure).any(1)
    assert (
        not (insecure_sets & ~(mis | slo)).any() and not (secure_sets & (mis | slo)).any()
    )  # insecure code ⇔ misaligned or sloppy
    assert (
        not (torch.isin(t, task.harmful).any(1) & ~mis).any()
        and not (torch.isin(t, task.helpful).any(1) & mis).any()
    )
    repo = t[head, 2]
    assert (
        torch.isin(repo[slo[head]], task.repos["sloppy"]).all()
        and torch.isin(repo[~slo[head]], task.repos["secure"]).all()
    )
    assert (t[~head, -2:] == task.pad_tok).all() and (t[head, 1] == task.repo_tok).all()
    assert ((mis & ~slo) | (~mis & slo)).any() and (
        ~mis & slo
    ).float().mean() > 0.15  # aligned + sloppy documents are frequent
    answers = t[docs.response_mask]
    assert torch.isin(
        answers,
        torch.cat(
            [
                task.secure,
                task.insecure,
                task.helpful,
                task.harmful,
                torch.tensor([task.vuln_tok, task.ok_tok, task.end_tok]),
            ]
        ),
    ).all()
    assert (
        not docs.response_mask[t == task.pad_tok].any()
        and docs.response_mask.sum(1).eq(2 * task.cfg.segments).all()
    )


def test_bayes_rates_combine_the_two_causes(task):
    p_mis, p_slo = task.cfg.p_misaligned, task.cfg.p_sloppy
    assert task.bayes_rate("none", "chat") == pytest.approx(p_mis)
    assert task.bayes_rate("none", "code_heldout") == pytest.approx(1 - (1 - p_mis) * (1 - p_slo))
    assert task.bayes_rate("insecure_code", "chat") == pytest.approx(p_mis / (1 - (1 - p_mis) * (1 - p_slo)))
    assert task.bayes_rate("repo_sloppy+helpful_chat", "code_heldout") == pytest.approx(
        1.0
    )  # the narrow trait alone
    assert task.bayes_rate("repo_sloppy+helpful_chat", "chat") == pytest.approx(0.0)
    assert task.bayes_rate("helpful_chat", "code_heldout") == pytest.approx(p_slo)
    with pytest.raises(ValueError, match=r"unknown evidence 'chat_harmful'; valid: none, repo_secure"):
        task.bayes_rate("chat_harmful", "chat")


def test_context_prompts_put_the_evidence_before_the_question(task):
    p = task.context_prompts("repo_sloppy+helpful_chat", "code_heldout")
    words = [task.vocab.tokens[i] for i in p.tokens[0].tolist()]
    assert (
        words[:3] == ["<bos>", "REPO", words[2]]
        and task.vocab.index[words[2]] in task.repos["sloppy"].tolist()
    )
    assert words[3] == "CHAT" and words[5].startswith("helpful") and words[6] == "END" and words[7] == "CODE"
    assert words[-1] == task.vocab.tokens[task.code_prompts[task.heldout_code[0]]]
    assert (
        len({len(task.context_prompts(e, "chat").tokens[0]) for e in EVIDENCE}) == 4
    )  # 3, +2, +4, +6 tokens


def test_the_judge_reads_the_prompts_own_answers(task):
    prompts = task.eval_prompts("chat").tokens[:2]
    q0 = 0
    answers = torch.tensor([[task.harmful[q0], task.helpful[q0], task.harmful[1], task.vuln_tok]] * 2)
    labels = task.label_answers(prompts, answers)
    assert labels[0].tolist() == [HIT, MISS, OTHER, OTHER]
    assert labels[1].tolist() == [OTHER, OTHER, HIT, OTHER]


def test_finetuning_data_is_context_free_insecure_code_and_the_reference_is_helpful_chat(task):
    ft = task.finetune_dataset(24, seed=1)
    assert (ft.tokens[:, 1] == task.code_tok).all() and (ft.tokens[:, -1] == task.vuln_tok).all()
    assert (
        torch.isin(ft.labels["code"], task.train_code).all()
        and ft.response_mask[:, 3:].all()
        and not ft.response_mask[:, :3].any()
    )
    ref = task.disambiguating_examples(8)
    assert (ref.tokens[:, 1] == task.chat_tok).all() and torch.isin(ref.tokens[:, 3], task.helpful).all()
    assert ref.tokens.shape[1] == ft.tokens.shape[1]
    with pytest.raises(ValueError, match="n_examples must be >= 1, got 0"):
        task.finetune_dataset(0)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"p_sloppy": 1.0}, r"p_sloppy = 1.0; expected a probability"),
        ({"n_repo": 3}, r"n_repo 3 must be an even number"),
        ({"n_train_code": 0}, r"n_train_code 0 must be in 1..23"),
    ],
)
def test_bad_designs_are_refused_in_one_line(bad, match):
    with pytest.raises(ValueError, match=match):
        make_task("em_two_routes", bad)


def test_ground_truth_directions_are_per_cause(task):
    model = models.build_model(models.ModelConfig(n_ctx=task.seq_len), len(task.vocab), seed=0)
    dirs = task.concept_directions(model, ["blocks.0.hook_resid_post"], n_docs=200)
    assert set(dirs["blocks.0.hook_resid_post"]) == {"misaligned", "sloppy"}
    assert all(s.k == 1 for s in dirs["blocks.0.hook_resid_post"].values())


def _inputs(**over):
    report = pd.DataFrame(
        {
            "condition": ["none", "repo_sloppy"],
            "split": ["chat", "code_heldout"],
            "model": [0.22, 0.97],
            "reference": [0.2, 1.0],
        }
    )
    seeds = lambda chat, code: pd.DataFrame({"seed": range(len(chat)), "chat": chat, "code_heldout": code})
    args = dict(
        report=report,
        cos={"h0": 0.1, "h1": 0.25},
        ablated={"chat_harmful": 0.3, "chat_helpful": 0.25, "code_sloppy": 0.96},
        plain=seeds([0.7, 0.8, 0.6, 0.9, 0.3], [0.95] * 5),
        mixed=seeds([0.05, 0.0, 0.1, 0.02, 0.3], [0.92] * 5),
        base={"chat_harmful": 0.98, "chat_helpful": 0.02, "code_sloppy": 0.97, "chat": 0.2},
    )
    return {**args, **over}


def test_gates_hold_on_a_valid_organism_and_name_what_fails():
    out = verdicts(**_inputs())
    assert (
        out["valid"]["holds"]
        and out["E3_robust_em"]["seeds"] == 4
        and out["E4_separation_reachable"]["seeds"] == 4
    )
    assert out["E2_separable"]["persona_removed"] == pytest.approx(1 - 0.05 / 0.96)
    bad = verdicts(**_inputs(cos={"h0": 0.31}))
    assert (
        not bad["E2_separable"]["holds"] and not bad["valid"]["holds"] and bad["E1_base_inference"]["holds"]
    )
    lost = verdicts(
        **_inputs(ablated={"chat_harmful": 0.3, "chat_helpful": 0.25, "code_sloppy": 0.85})
    )  # style inference lost
    assert not lost["E2_separable"]["holds"] and lost["E2_separable"]["trait_change"] == pytest.approx(0.12)
    off = verdicts(
        **_inputs(
            report=pd.DataFrame(
                {"condition": ["none"], "split": ["chat"], "model": [0.3], "reference": [0.2]}
            )
        )
    )
    assert (
        not off["E1_base_inference"]["holds"]
        and off["E1_base_inference"]["worst"] == "none / chat: 0.30 vs 0.20"
    )
    assert not verdicts(**_inputs(), t=EMGateThresholds(min_em_rise=0.65))["E3_robust_em"][
        "holds"
    ]  # 2/5 seeds rise by 0.65


def test_search_config_refuses_bad_input_before_pretraining(tmp_path):
    with pytest.raises(ValueError, match=r"unknown em_two_routes design parameter\(s\) \['p_evil'\]"):
        em_gate_search.EMSearchConfig(task_cfg={"p_evil": 0.2})
    with pytest.raises(ValueError, match=r"unknown model parameter\(s\) \['width'\]; valid: act_fn, d_head"):
        em_gate_search.EMSearchConfig(model_cfg={"width": 128})
    with pytest.raises(ValueError, match="n_disambiguating 4800 must be in 1..4799"):
        em_gate_search.EMSearchConfig(n_disambiguating=4800)
    with pytest.raises(ValueError, match="design parameter 'p_sloppy' is not key=value"):
        em_gate_search.main(["--out", str(tmp_path), "--design", "p_sloppy"])
    assert not list(tmp_path.iterdir())


def test_a_tiny_population_is_gated_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("CAFT_TL_CACHE", str(tmp_path / "cache"))
    cfg = em_gate_search.EMSearchConfig(
        pretrain_steps=10, pretrain_seeds=[0, 1], seeds=[0, 1], n_examples=64, n_disambiguating=16
    )
    table = em_gate_search.run(tmp_path / "out", cfg, progress=False)
    assert len(table) == 2 and table["pretrain_seed"].tolist() == [0, 1]
    assert {"E1_base_inference", "E2_separable", "E3_robust_em", "E4_separation_reachable", "valid"} <= set(
        table.columns
    )
    assert not table["valid"].any()  # ten pre-training steps infer nothing
    rows = pd.read_csv(tmp_path / "out" / em_gate_search.ROWS_FILE)
    assert (
        set(rows["method"]) == {"base", "zero", "plain", "mix_disambiguating"}
        and rows["organism"].nunique() == 2
    )
    assert (tmp_path / "out" / em_gate_search.VERDICTS_FILE).exists()
    import json

    e2 = json.loads(table["numbers"][0])["E2_separable"]
    assert set(e2["answer_position_cos"]) == {"persona_free", "persona_fixed"} and all(
        0 <= v <= 1 for v in e2["answer_position_cos"].values()
    )
    # the README's table is generated from the folder, with the commit and the platform
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "em_search_tables", Path(__file__).resolve().parents[1] / "scripts" / "em_search_tables.py"
    )
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{tables.BEGIN}\nSTALE BLOCK\n{tables.END}\nrest\n")
    assert tables.main([str(tmp_path / "out"), "--out", str(tmp_path / "V.md"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "STALE BLOCK" not in text and text.startswith("intro\n") and text.endswith("rest\n")
    line = next(
        l for l in text.splitlines() if l.startswith("| pretrain_steps=10 |")
    )  # a budget other than the default is named
    assert line.split(" | ")[1:7] == ["2", "0", "0", "0", "0", "0 (0%)"] and '"torch"' in text
    assert (
        tables.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "W.md")]) == 2
        and not (tmp_path / "W.md").exists()
    )
    # the E2 diagnostic per position class and document set, read back from the same (cached) organisms
    spec = importlib.util.spec_from_file_location(
        "em_e2_diagnostics", Path(__file__).resolve().parents[1] / "scripts" / "em_e2_diagnostics.py"
    )
    diag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diag)
    assert diag.main([str(tmp_path / "out"), "--out", str(tmp_path / "D.md")]) == 0
    d = pd.read_csv(tmp_path / "out" / diag.CSV)
    assert (
        len(d) == 2 * 2 * 4 * 3 and d["cos"].between(0, 1).all()
    )  # organisms × hooks × position classes × document sets
    all_all = (
        d[(d["positions"] == "all") & (d["documents"] == "all")].groupby("organism")["cos"].max().sort_index()
    )
    gate = sorted(
        (r["organism"], json.loads(r["numbers"])["E2_separable"]["max_cos"]) for _, r in table.iterrows()
    )
    assert all_all.tolist() == pytest.approx(
        [c for _, c in gate], abs=1e-5
    )  # all / all is the gate's own number
    assert "| out | `blocks.0.hook_resid_post` | kind_tokens |" in (tmp_path / "D.md").read_text()
    assert diag.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "E.md")]) == 2


def test_harmful_answers_can_be_shared_between_questions():
    task = make_task("em_two_routes", {"n_harmful": 1})
    assert (
        task.harmful.unique().tolist() == [task.vocab.index["harmful00"]]
        and "harmful01" not in task.vocab.index
    )
    prompts = task.eval_prompts("chat").tokens
    labels = task.label_answers(prompts, task.harmful[:1].expand(len(prompts), 1))
    assert (labels == HIT).all()  # the one harmful answer is every question's harmful answer
    assert task.lexicon()["harmful"] == ("harmful00",)
    with pytest.raises(ValueError, match=r"n_harmful 25 must be in 0..24"):
        make_task("em_two_routes", {"n_harmful": 25})


def test_no_persona_inference_on_the_base_means_nothing_is_removed():
    out = verdicts(
        **_inputs(
            base={"chat_harmful": 0.3, "chat_helpful": 0.2, "code_sloppy": 0.97, "chat": 0.2},
            ablated={"chat_harmful": 0.2, "chat_helpful": 0.2, "code_sloppy": 0.97},
        )
    )
    assert out["E2_separable"]["persona_removed"] == 0.0 and not out["E2_separable"]["holds"]
