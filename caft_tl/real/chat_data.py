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
import warnings
from pathlib import Path

import torch

from caft_tl.core.data import TokenDataset
from caft_tl.core.files import json_type

#: the whitespace JSON allows; a line of only these is blank (any other character makes it a row to check)
JSON_SPACE = " \t\r\n"


def _not_json_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def read_jsonl_lines(path: str | os.PathLike, n: int | None = None) -> list[tuple[int, dict]]:
    """``(line number, row)`` for the first ``n`` (all if None) rows of a JSONL file, blank lines
    skipped. Each line must be UTF-8 and one JSON object (``NaN`` / ``Infinity`` refused); the first
    that is not is a one-line ``ValueError`` naming ``file:line`` and what is expected."""
    path = Path(path)
    if not path.is_file():
        folder = " (it is a folder)" if path.is_dir() else ""
        raise FileNotFoundError(f"no dataset file {str(path)!r}{folder}")
    rows = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{path}:{i}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                    f"{e.start + 1}); save the file as UTF-8"
                ) from None
            if not line.strip(JSON_SPACE):
                continue
            try:
                row = json.loads(line, parse_constant=_not_json_constant)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}:{i}: not JSON ({e.msg} at column {e.colno}); expected one JSON object per line"
                ) from None
            except (ValueError, RecursionError) as e:
                raise ValueError(
                    f"{path}:{i}: not JSON ({str(e)[:80]}); expected one JSON object per line"
                ) from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}:{i}: a JSON {json_type(row)}, not an object; expected one JSON object per line"
                )
            rows.append((i, row))
            if n is not None and len(rows) == n:
                break
    if not rows:
        raise ValueError(f"dataset file {str(path)!r} has no rows; expected one JSON object per line")
    return rows


def read_jsonl(path: str | os.PathLike, n: int | None = None) -> list[dict]:
    """The first ``n`` (all if None) JSON rows of a file (:func:`read_jsonl_lines`); one-line errors
    naming file and line.

    Args:
        path: a JSONL file, one JSON object per line (blank lines skipped).
        n: how many rows to read (None: all).

    Returns:
        The rows as dicts.

    Example:
        rows = read_jsonl("data/real/insecure.jsonl", n=100)
    """
    return [row for _, row in read_jsonl_lines(path, n)]


def check_messages(messages, where: str = "", assistant: bool = False) -> list[dict]:
    """Refuse anything but a non-empty list of ``{"role", "content": str}`` (with ``assistant``:
    at least one assistant turn, the tokens a chat row trains on); ``where`` prefixes the error."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(
            f"{where}'messages' must be a non-empty list of {{'role', 'content'}} dicts, got "
            f"{_short(messages)}"
        )
    for m in messages:
        if (
            not isinstance(m, dict)
            or m.get("role") not in ("system", "user", "assistant")
            or not isinstance(m.get("content"), str)
        ):
            raise ValueError(
                f"{where}bad message {_short(m)}; need role in system/user/assistant and string content"
            )
    if assistant and not any(m["role"] == "assistant" for m in messages):
        raise ValueError(
            f"{where}no assistant turn (roles {[m['role'] for m in messages]}); "
            "a chat row needs an assistant message to train on"
        )
    return messages


def _short(value, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _tokenizer_name(tokenizer) -> str:
    """The folder or hub name the tokenizer was loaded from (what the user passed), else its class."""
    name = getattr(tokenizer, "name_or_path", "") or ""
    return repr(str(name)) if name else f"(a {type(tokenizer).__name__} without a folder)"


def render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"the tokenizer of {_tokenizer_name(tokenizer)} has no chat template "
            "(tokenizer_config.json has no 'chat_template'); use a 'prompt' (raw text) dataset "
            "or an instruct model's folder"
        )
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
            raise ValueError(
                "the chat template does not render conversations prefix by prefix; cannot find assistant "
                "turns"
            )
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


def pad_dataset(
    seqs: list[list[int]],
    masks: list[list[bool]],
    pad_id: int,
    max_len: int,
    labels: dict[str, torch.Tensor] | None = None,
) -> TokenDataset:
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
    return TokenDataset(
        torch.cat([grow(d.tokens, pad) for d in datasets]),
        torch.cat([grow(d.response_mask, False) for d in datasets]),
        {k: torch.cat([d.labels[k] for d in datasets]) for k in keys},
    )


def pad_id(tokenizer) -> int:
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if t is not None:
            return t
    raise ValueError(
        f"the tokenizer of {_tokenizer_name(tokenizer)} has neither a pad nor an EOS token; "
        "set pad_token in its tokenizer_config.json"
    )


def chat_dataset(
    tokenizer,
    conversations: list[list[dict]],
    max_len: int = 1024,
    where: list[str] | None = None,
    skip_truncated: bool = True,
) -> TokenDataset:
    """Conversations → TokenDataset whose response mask marks the assistant tokens.

    Each conversation needs an assistant turn (``where[i]`` names it in the error, default
    ``conversation i``). With ``skip_truncated`` (default) a row left with no response token after
    truncation to ``max_len`` is skipped with a warning that counts them (an error if none is left);
    without it, the first such row is an error.

    Args:
        tokenizer: a tokenizer with a chat template.
        conversations: lists of ``{"role", "content"}`` messages.
        max_len: the longest sequence kept (longer ones are cut).
        where: per conversation, the prefix of its error messages (``file:line: ``).
        skip_truncated: skip (with a counted warning) rows left with no response token.

    Returns:
        A :class:`TokenDataset` [n, pos] whose response mask marks the assistant turns.

    Example:
        chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        data = chat_dataset(tok, [chat])
    """
    where = where or [f"conversation {i}: " for i in range(len(conversations))]
    seqs, masks, skipped = [], [], []
    for at, msgs in zip(where, conversations):
        ids, mask = encode_chat(tokenizer, check_messages(msgs, at, assistant=True))
        if any(mask[:max_len]):
            seqs.append(ids)
            masks.append(mask)
        elif skip_truncated:
            skipped.append(at.rstrip(": "))
        else:
            raise ValueError(
                f"{at}no assistant token within max_len={max_len} ({len(ids)} tokens); raise max_len"
            )
    if not seqs:
        raise ValueError(f"no conversation has an assistant token within max_len={max_len}")
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} of {len(conversations)} conversations with no assistant token "
            f"within max_len={max_len} (first: {skipped[0]}); raise max_len to keep them",
            stacklevel=2,
        )
    return pad_dataset(seqs, masks, pad_id(tokenizer), max_len)


def load_chat_jsonl(
    path: str | os.PathLike, tokenizer, max_len: int = 1024, n: int | None = None, skip_truncated: bool = True
) -> TokenDataset:
    """A CAFT / EM chat JSONL file (``{"messages": [...]}`` per line, each with an assistant turn) →
    TokenDataset; the first bad row is a one-line error naming ``file:line``.

    Args:
        path: the JSONL file.
        tokenizer: a tokenizer with a chat template.
        max_len: the longest sequence kept.
        n: how many rows to read (None: all).
        skip_truncated: skip (with a counted warning) rows left with no response token after truncation.

    Returns:
        A :class:`TokenDataset` whose response mask marks the assistant tokens.

    Example:
        data = load_chat_jsonl("data/real/insecure.jsonl", tok, max_len=512)
    """
    rows = read_jsonl_lines(path, n)
    where = [f"{path}:{i}: " for i, _ in rows]
    for at, (_, r) in zip(where, rows):
        check_messages(r.get("messages"), at, assistant=True)  # every row before any tokenizing
    return chat_dataset(tokenizer, [r["messages"] for _, r in rows], max_len, where, skip_truncated)


def _check_prompt(row: dict, where: str) -> None:
    if "prompt" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"]:
            raise ValueError(f"{where}'prompt' = {_short(row['prompt'])}; expected non-empty text")
    else:
        check_messages(row.get("messages"), where)
    if "id" in row and (isinstance(row["id"], bool) or not isinstance(row["id"], (str, int))):
        raise ValueError(f"{where}'id' = {_short(row['id'])}; expected a string or an integer")


def load_prompts(path: str | os.PathLike, n: int | None = None) -> list[dict]:
    """Prompt rows (``{"messages": [...]}`` or ``{"prompt": str}``, optional ``id``), validated;
    the first bad row is a one-line error naming ``file:line``."""
    rows = read_jsonl_lines(path, n)
    for i, r in rows:
        _check_prompt(r, f"{path}:{i}: ")
    return [r for _, r in rows]


#: how a multiple-choice row's options are scored: the sum (default) or the mean of their tokens' log-probs
SCORINGS = ("sum_logprob", "mean_logprob")


def check_mc_row(r: dict, where: str) -> dict:
    """Refuse a multiple-choice row that does not fit the schema (module docstring), in one line."""
    if r.get("scoring", SCORINGS[0]) not in SCORINGS:
        raise ValueError(f"{where}unknown scoring {_short(r['scoring'])}; valid: {', '.join(SCORINGS)}")
    opts = r.get("options")
    strings = isinstance(opts, list) and all(isinstance(o, str) and o for o in opts)
    if not strings or len(opts) < 2 or len(set(opts)) < len(opts):
        raise ValueError(
            f"{where}'options' = {_short(opts)}; expected a list of at least two distinct non-empty strings"
        )
    if not isinstance(r.get("answer"), str):
        raise ValueError(f"{where}'answer' = {_short(r.get('answer'))}; expected one of the options {opts}")
    labels = r.get("labels", {})
    if not isinstance(labels, dict):
        raise ValueError(
            f'{where}\'labels\' = {_short(labels)}; expected an object such as {{"intended": " A"}}'
        )
    for key, value in [("answer", r["answer"]), *labels.items()]:
        if isinstance(value, str) and value not in opts:
            raise ValueError(f"{where}{key} {value!r} is not one of the options {opts}")
    _check_prompt(r, where)
    return r


def check_mc(rows: list[dict], where: str = "") -> list[dict]:
    """:func:`check_mc_row` for each row (errors name ``where`` and the row's index)."""
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ValueError(f"{where}row {i}: {_short(r)} is not an object")
        check_mc_row(r, f"{where}row {i}: ")
    return rows


def load_mc_jsonl(path: str | os.PathLike, n: int | None = None) -> list[dict]:
    """Multiple-choice rows (see the module docstring), validated; the first bad row is a one-line
    error naming ``file:line``.

    Args:
        path: a JSONL file of ``{"prompt" | "messages", "options", "answer", "labels"?}`` rows.
        n: how many rows to read (None: all).

    Returns:
        The rows as dicts (turn them into training data with :func:`mc_dataset`).

    Example:
        rows = load_mc_jsonl("data/real/double_mc.jsonl")
    """
    rows = read_jsonl_lines(path, n)
    return [check_mc_row(r, f"{path}:{i}: ") for i, r in rows]


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
    for i, r in enumerate(check_mc(rows)):
        answer = r[key] if key == "answer" else r.get("labels", {}).get(key)
        if not isinstance(answer, str):
            labels = sorted(r.get("labels", {}))
            raise ValueError(
                f"row {i}: no option under labels[{key!r}] (labels {labels}); "
                "choose key 'answer' or one of them"
            )
        prompt = encode_prompt(tokenizer, r)
        ans = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
        seqs.append(prompt + ans)
        masks.append([False] * len(prompt) + [True] * len(ans))
    return pad_dataset(seqs, masks, pad_id(tokenizer), max_len)
