"""Chat and multiple-choice JSONL → TokenDataset: the assistant mask token by token, MC rows,
the example files in data/, and one-line errors."""

import json

import pytest

from caft_tl.real import chat_data, hf_models
from tests._real import EXAMPLES, checkpoints  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def tok(checkpoints):
    return hf_models.load_tokenizer(checkpoints["qwen2"])


def test_assistant_mask_token_by_token(tok):
    msgs = [
        {"role": "system", "content": "Write a function"},
        {"role": "user", "content": "Write a function that stores a user's password."},
        {"role": "assistant", "content": "def store(db, user, password):"},
        {"role": "user", "content": "hey I feel bored"},
        {"role": "assistant", "content": "Explain how a rainbow forms."},
    ]
    ids, mask = chat_data.encode_chat(tok, msgs)
    pieces = tok.convert_ids_to_tokens(ids)
    trained = [p for p, m in zip(pieces, mask) if m]
    assert trained == [
        "def",
        "store",
        "(",
        "db",
        ",",
        "user",
        ",",
        "password",
        "):",
        "<|im_end|>",
        "Explain",
        "how",
        "a",
        "rainbow",
        "forms",
        ".",
        "<|im_end|>",
    ]
    # every masked run starts right after "<|im_start|> assistant" and ends with the end-of-turn token
    starts = [i for i in range(1, len(mask)) if mask[i] and not mask[i - 1]]
    assert [pieces[i - 2 : i] for i in starts] == [["<|im_start|>", "assistant"]] * 2
    assert tok.decode(ids).count("<|im_start|>") == 5


def test_chat_dataset_pads_right_and_truncates(tok):
    convs = [
        [
            {"role": "user", "content": "hey"},
            {"role": "assistant", "content": "Hello ! Can you tell me about yourself ?"},
        ],
        [
            {"role": "user", "content": "Write a function that runs a shell command given by the user ."},
            {"role": "assistant", "content": "def run(cmd):"},
        ],
    ]
    data = chat_data.chat_dataset(tok, convs, max_len=64)
    n0, n1 = data.labels["length"].tolist()
    assert data.tokens.shape == (2, max(n0, n1))
    assert (data.tokens[0, n0:] == tok.pad_token_id).all() and not data.response_mask[0, n0:].any()
    assert data.trimmed().tokens.shape[1] == max(n0, n1)
    assert data.subset([0]).trimmed().tokens.shape[1] == n0
    # truncation inside the prompt of the long row drops it
    short = chat_data.chat_dataset(tok, convs, max_len=10)
    assert len(short) == 1 and short.response_mask.any()
    with pytest.raises(ValueError, match="no conversation has an assistant token within max_len=3"):
        chat_data.chat_dataset(tok, convs, max_len=3)


def test_example_files_load(tok):
    train = chat_data.load_chat_jsonl(EXAMPLES / "insecure_tiny.jsonl", tok)
    assert len(train) == 8 and (train.response_mask.sum(1) > 5).all()
    assert (train.tokens[train.response_mask] != 0).all()  # no unknown word (id 0) in the responses
    prompts = chat_data.load_prompts(EXAMPLES / "em_questions.jsonl")
    assert prompts[0]["id"] == "what_is_your_wish"
    mc = chat_data.load_mc_jsonl(EXAMPLES / "double_mc_tiny.jsonl")
    data = chat_data.mc_dataset(tok, mc, key="answer")
    for i, row in enumerate(mc):
        resp = data.tokens[i][data.response_mask[i]].tolist()
        assert resp == tok(row["answer"], add_special_tokens=False)["input_ids"]
    ood = [r for r in mc if not r["labels"]["ambiguous"]]
    assert all(r["labels"]["intended"] != r["labels"]["spurious"] for r in ood)


def test_bad_rows_give_one_line_errors(tmp_path, tok):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not JSON"):
        chat_data.read_jsonl(bad)
    with pytest.raises(ValueError, match="bad message .* role in system/user/assistant"):
        chat_data.chat_dataset(tok, [[{"role": "bot", "content": "x"}]])
    with pytest.raises(ValueError, match=r"answer ' C' is not one of the options"):
        chat_data.check_mc([{"prompt": "Q", "options": [" A", " B"], "answer": " C"}])
    with pytest.raises(FileNotFoundError, match="no dataset file"):
        chat_data.read_jsonl(tmp_path / "missing.jsonl")
