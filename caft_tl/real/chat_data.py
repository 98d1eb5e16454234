"""Real datasets → :class:`~caft_tl.core.data.TokenDataset`: chat JSONL (CAFT / EM format) with an exact
assistant-token mask, and multiple-choice JSONL.

Chat rows: ``{"messages": [{"role": "user" | "assistant" | "system", "content": str}, ...]}``.
The tokenizer's chat template renders the conversation; the response tokens are those of each
assistant turn *including* the template's end-of-turn marker (what the model must learn to emit
to stop), found by character offsets: turn ``i`` spans from the end of the render of
``messages[:i]`` with the generation prompt to the end of the render of ``messages[:i+1]``.

Multiple-choice rows: ``{"prompt": str}`` (raw text, for base models) or ``{"messages": [...]}``
(rendered with the generation prompt), plus ``"options"`` (e.g. ``[" A", " B"]``), ``"answer"``
(the trained option) and optional ``"labels"`` (other keys to score against, e.g. ``intended`` /
``spurious``) and ``"scoring"`` (:data:`SCORINGS`: ``sum_logprob``, the default, or ``mean_logprob``,
length-normalised, for options of different lengths). Sequences are right-padded; ``labels["length"]``
holds each row's true length.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from caft_tl.core.data import TokenDataset


def read_jsonl(path: str | os.PathLike, n: int | None = None) -> list[dict]:
    """The first ``n`` (all if None) JSON rows of a file; one-line errors naming file and line.

    Args:
        path: a JSONL file, one JSON object per line (blank lines skipped).
        n: how many rows to read (None: all).

    Returns:
        The rows as dicts.

    Example:
        rows = read_jsonl("data/real/insecure.jsonl", n=100)
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no dataset file {str(path)!r}")
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from None
            if n is not None and len(rows) == n:
                break
    if not rows:
        raise ValueError(f"dataset file {str(path)!r} has no rows")
    return rows


def check_messages(messages, where: str = "") -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}'messages' must be a non-empty list of {{'role', 'content'}} dicts")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}bad message {m!r}; need role in system/user/assistant and string content")
    return messages


def render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no chat template; use a 'prompt' (raw text) dataset")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def response_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn (with end-of-turn)."""
    text = render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = render(tokenizer, messages[:i], generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1])
        if not (text.startswith(prefix) and text.startswith(upto) and len(upto) > len(prefix)):
            raise ValueError("the chat template does not render conversations prefix by prefix; cannot find assistant turns")
        spans.append((len(prefix), len(upto)))
    return text, spans


def encode_chat(tokenizer, messages: list[dict]) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and, per token, whether it is assistant output.

    A token belongs to the response iff its characters lie inside an assistant span (a token
    that straddles a span boundary is not trained on).
    """
    text, spans = response_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [any(s <= a and b <= e and b > a for s, e in spans) for a, b in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def encode_prompt(tokenizer, row: dict) -> list[int]:
    """Token ids of a multiple-choice / evaluation prompt: raw ``prompt`` text (with the
    tokenizer's special tokens, e.g. BOS) or ``messages`` rendered with the generation prompt."""
    if "prompt" in row:
        return list(tokenizer(row["prompt"])["input_ids"])
    text = render(tokenizer, check_messages(row.get("messages")), generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def pad_dataset(seqs: list[list[int]], masks: list[list[bool]], pad_id: int, max_len: int,
                labels: dict[str, torch.Tensor] | None = None) -> TokenDataset:
    """Right-pad (and truncate to ``max_len``) into a TokenDataset with ``labels['length']``."""
    width = min(max_len, max(len(s) for s in seqs))
    tokens = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    lengths = torch.zeros(len(seqs), dtype=torch.long)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        s, m = s[:width], m[:width]
        tokens[i, : len(s)] = torch.tensor(s)
        mask[i, : len(m)] = torch.tensor(m, dtype=torch.bool)
        lengths[i] = len(s)
    return TokenDataset(tokens, mask, {"length": lengths, **(labels or {})})


def concat(datasets: list[TokenDataset], pad: int) -> TokenDataset:
    """Right-padded datasets of different widths → one (padding with ``pad``); keeps shared labels."""
    width = max(d.tokens.shape[1] for d in datasets)
    grow = lambda t, v: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=v)
    keys = set.intersection(*(set(d.labels) for d in datasets))
    return TokenDataset(torch.cat([grow(d.tokens, pad) for d in datasets]),
                        torch.cat([grow(d.response_mask, False) for d in datasets]),
                        {k: torch.cat([d.labels[k] for d in datasets]) for k in keys})


def pad_id(tokenizer) -> int:
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if t is not None:
            return t
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has neither a pad nor an EOS token")


def chat_dataset(tokenizer, conversations: list[list[dict]], max_len: int = 1024) -> TokenDataset:
    """Conversations → TokenDataset whose response mask marks the assistant tokens.

    Rows left with no response token after truncation to ``max_len`` are dropped (an error if
    that leaves none).

    Args:
        tokenizer: a tokenizer with a chat template.
        conversations: lists of ``{"role", "content"}`` messages.
        max_len: the longest sequence kept (longer ones are cut).

    Returns:
        A :class:`TokenDataset` [n, pos] whose response mask marks the assistant turns.

    Example:
        chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        data = chat_dataset(tok, [chat])
    """
    seqs, masks = [], []
    for i, msgs in enumerate(conversations):
        ids, mask = encode_chat(tokenizer, check_messages(msgs, f"conversation {i}: "))
        if any(mask[: max_len]):
            seqs.append(ids)
            masks.append(mask)
    if not seqs:
        raise ValueError(f"no conversation has an assistant token within max_len={max_len}")
    return pad_dataset(seqs, masks, pad_id(tokenizer), max_len)


def load_chat_jsonl(path: str | os.PathLike, tokenizer, max_len: int = 1024, n: int | None = None) -> TokenDataset:
    """A CAFT / EM chat JSONL file (``{"messages": [...]}`` per line) → TokenDataset.

    Args:
        path: the JSONL file.
        tokenizer: a tokenizer with a chat template.
        max_len: the longest sequence kept.
        n: how many rows to read (None: all).

    Returns:
        A :class:`TokenDataset` whose response mask marks the assistant tokens.

    Example:
        data = load_chat_jsonl("data/real/insecure.jsonl", tok, max_len=512)
    """
    rows = read_jsonl(path, n)
    return chat_dataset(tokenizer, [r.get("messages") for r in rows], max_len)


def load_prompts(path: str | os.PathLike, n: int | None = None) -> list[dict]:
    """Prompt rows (``{"messages": [...]}`` or ``{"prompt": str}``, optional ``id``), validated."""
    rows = read_jsonl(path, n)
    for i, r in enumerate(rows):
        if "prompt" not in r:
            check_messages(r.get("messages"), f"{path} row {i}: ")
    return rows


#: how a multiple-choice row's options are scored: the sum (default) or the mean of their tokens' log-probs
SCORINGS = ("sum_logprob", "mean_logprob")


def check_mc(rows: list[dict], where: str = "") -> list[dict]:
    for i, r in enumerate(rows):
        if r.get("scoring", SCORINGS[0]) not in SCORINGS:
            raise ValueError(f"{where}row {i}: unknown scoring {r['scoring']!r}; valid: {', '.join(SCORINGS)}")
        opts = r.get("options")
        if not isinstance(opts, list) or len(opts) < 2:
            raise ValueError(f"{where}row {i}: 'options' must list at least two answer strings")
        for key, value in [("answer", r.get("answer")), *r.get("labels", {}).items()]:
            if isinstance(value, str) and value not in opts:
                raise ValueError(f"{where}row {i}: {key} {value!r} is not one of the options {opts}")
        if "prompt" not in r:
            check_messages(r.get("messages"), f"{where}row {i}: ")
    return rows


def load_mc_jsonl(path: str | os.PathLike, n: int | None = None) -> list[dict]:
    """Multiple-choice rows (see the module docstring), validated.

    Args:
        path: a JSONL file of ``{"prompt" | "messages", "options", "answer", "labels"?}`` rows.
        n: how many rows to read (None: all).

    Returns:
        The rows as dicts (turn them into training data with :func:`mc_dataset`).

    Example:
        rows = load_mc_jsonl("data/real/double_mc.jsonl")
    """
    return check_mc(read_jsonl(path, n), f"{path}: ")


def mc_dataset(tokenizer, rows: list[dict], key: str = "answer", max_len: int = 1024) -> TokenDataset:
    """Prompt + the option named by ``key`` (``answer`` or a label) as the response → TokenDataset.

    Args:
        tokenizer: the model's tokenizer.
        rows: multiple-choice rows (:func:`load_mc_jsonl`).
        key: ``answer`` or the name of one of the rows' ``labels``.
        max_len: the longest sequence kept.

    Returns:
        A :class:`TokenDataset` whose response is the chosen option's tokens.

    Example:
        data = mc_dataset(tok, load_mc_jsonl("data/real/double_mc.jsonl"))
    """
    seqs, masks = [], []
    for r in check_mc(rows):
        answer = r[key] if key == "answer" else r["labels"][key]
        prompt = encode_prompt(tokenizer, r)
        ans = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
        seqs.append(prompt + ans)
        masks.append([False] * len(prompt) + [True] * len(ans))
    return pad_dataset(seqs, masks, pad_id(tokenizer), max_len)
