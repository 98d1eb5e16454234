"""Tiny local HF checkpoints for the real-model tests (random weights, word-level chat tokenizer
over the words of ``data/examples``), built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from caft_tl.real import chat_data, hf_models

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"


def example_words() -> list[str]:
    texts = ["system user assistant"]
    for f in sorted(EXAMPLES.glob("*.jsonl")):
        for row in chat_data.read_jsonl(f):
            texts += [m["content"] for m in row.get("messages", [])] + [row.get("prompt", "")] + row.get("options", [])
    return hf_models.words_of(texts)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """arch -> folder of a tiny random checkpoint whose tokenizer knows the example files' words."""
    root = tmp_path_factory.mktemp("hf")
    words = example_words()
    return {arch: hf_models.tiny_checkpoint(root / arch, arch, words=words, seed=0) for arch in hf_models.TINY_ARCHS}
