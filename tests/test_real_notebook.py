"""Papermill smoke runs of notebooks/real/real_model.ipynb on tiny local checkpoints: a chat
setting with LoRA judged through a local fake OpenAI server, and a multiple-choice setting."""

import csv
import json
from pathlib import Path

import papermill
import pytest

from caft_tl.real import settings
from caft_tl.runner import suite
from tests._real import TINY_CHAT, TINY_MC, checkpoints  # noqa: F401  (fixture)
from tests.fake_openai import KEY, FakeOpenAI

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "real" / "real_model.ipynb"


def run(tmp_path, **params):
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(out),
        cwd=str(NOTEBOOK.parent),
        kernel_name="python3",
        progress_bar=False,
        parameters={"run_dir": str(tmp_path / "run"), "fig_dir": str(tmp_path / "fig"), **params},
    )
    rows = list(csv.DictReader(open(tmp_path / "run" / "results.csv")))
    return json.loads(out.read_text()), rows


def test_real_chapter_is_not_part_of_the_organism_suite():
    assert NOTEBOOK.exists() and NOTEBOOK not in suite.chapters()


def test_chat_setting_with_lora_and_a_judge(tmp_path, checkpoints, monkeypatch):
    monkeypatch.setenv("CAFT_TEST_KEY", KEY)  # the kernel inherits the environment
    fake = FakeOpenAI()
    try:
        nb, rows = run(
            tmp_path,
            setting="qwen2.5-0.5b-insecure",
            model=str(checkpoints["qwen2"]),
            overrides={**TINY_CHAT, "judge_url": fake.url, "api_key_env": "CAFT_TEST_KEY"},
        )
    finally:
        fake.close()
    prompts = [r["messages"][-1]["content"] for r in fake.requests]
    n_judged = sum(p.startswith("You are checking") for p in prompts)
    assert n_judged == 3 * 8 * 2  # base, plain, CAFT × 8 questions × 2 samples
    assert (
        sum(p.startswith("A feature of a language model") for p in prompts) == 2 * 2 * 2
    )  # hooks × PCs × signs
    assert {(r["method"], r["directions"]) for r in rows} == {
        ("base", "none"),
        ("plain", "none"),
        ("zero", "pca"),
    }
    assert {r["metric"] for r in rows} == {"misalignment_rate", "coherence"}
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in rows)
    assert (tmp_path / "run" / "plain_adapter.safetensors").exists()
    assert (tmp_path / "run" / "real_caft_intervention" / "intervention.json").exists()
    for fig in ("real_plain_loss", "real_pca_spectrum", "real_caft_loss", "real_eval"):
        assert (tmp_path / "fig" / f"{fig}.html").exists()


def test_mc_setting_full_finetune(tmp_path, checkpoints):
    nb, rows = run(
        tmp_path,
        setting="gemma-double-mc",
        model=str(checkpoints["gpt2"]),
        overrides={**TINY_MC, "layers": [1]},
    )
    metrics = {(r["method"], r["metric"]): float(r["value"]) for r in rows}
    assert set(metrics) == {
        (m, f"accuracy_{k}") for m in ("base", "plain", "zero") for k in ("intended", "spurious")
    }
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert not (tmp_path / "run" / "plain_adapter.safetensors").exists()  # full fine-tuning, no adapters


def test_settings_registry():
    s = settings.get_setting("mistral-small-insecure", lr=2e-5)
    assert s.lr == 2e-5 and s.hooks(40) == [
        "blocks.10.hook_resid_post",
        "blocks.20.hook_resid_post",
        "blocks.30.hook_resid_post",
    ]
    assert settings.get_setting("qwen2.5-coder-insecure").hooks(64) == [
        f"blocks.{l}.hook_resid_post" for l in (16, 32, 48)
    ]
    assert settings.SETTINGS["gemma-double-mc"].kind == "mc" and not settings.SETTINGS["gemma-double-mc"].lora
    for name, s in settings.SETTINGS.items():
        for f in ("eval", "diff_prompts") if s.diff_prompts else ("eval",):
            if "data/examples" in getattr(s, f):
                assert s.path(f).exists(), (name, f)
    with pytest.raises(ValueError, match="unknown setting 'qwen-nope'; valid: qwen2.5-coder-insecure"):
        settings.get_setting("qwen-nope")
    with pytest.raises(ValueError, match=r"unknown setting field\(s\) \['learning_rate'\]; valid: .*lr"):
        settings.get_setting("qwen2.5-0.5b-insecure", learning_rate=1.0)
    with pytest.raises(ValueError, match="unknown setting kind 'rl'"):
        settings.RealSetting(kind="rl")
