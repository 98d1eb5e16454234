"""Evaluating real (chat) models: sampling with an intervention on or off, misalignment rates from
a judge over the samples, multiple-choice accuracy from option logits, and completions to generic
prompts as a diffing dataset (the CAFT paper's second source of activations)."""

from __future__ import annotations

import pandas as pd
import torch

from caft_tl.core.data import TokenDataset
from caft_tl.organism.judge import HIT, MISS
from caft_tl.real.chat_data import chat_dataset, encode_prompt, pad_id

#: end-of-turn tokens of common chat templates (Qwen / ChatML, Llama 3, Gemma, Mistral's EOS)
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>", "</s>")


def stop_ids(tokenizer) -> set[int]:
    vocab = tokenizer.get_vocab()
    ids = {vocab[t] for t in END_OF_TURN if t in vocab}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


@torch.inference_mode()
def sample_chat(
    model,
    tokenizer,
    rows: list[dict],
    n_samples: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    fwd_hooks=(),
) -> pd.DataFrame:
    """``n_samples`` sampled answers per prompt row (``messages`` or ``prompt``), with ``fwd_hooks``
    (e.g. ``intervention.fwd_hooks()``: positions ``all``) active during generation; temperature 0
    is greedy. Columns: row, id, sample, prompt, answer.

    Greedy answers without hooks on a TransformerBridge come from HF's ``generate`` on the wrapped
    model, every prompt in one left-padded batch (:func:`greedy_batched`: nothing TL sees is lost,
    and one batch replaces a loop of single-token forwards through the bridge, about 10× faster on
    SmolLM2). Otherwise the samples of one prompt form one batch through ``model.generate`` (same
    length: no padding) with the KV cache (which the bridge gets right only with
    :func:`caft_tl.real.hf_models.patch_kv_cache`, installed by the loader: tested equal to uncached
    generation, hooks on, and on SmolLM2 in ``tests/test_offline_models.py``)."""
    from caft_tl.real.hf_models import is_bridge

    stops = stop_ids(tokenizer)
    prompts = [encode_prompt(tokenizer, row) for row in rows]
    if temperature == 0 and not list(fwd_hooks) and is_bridge(getattr(model, "_model", model)):
        answers = greedy_batched(model, tokenizer, prompts, max_new_tokens, stops)
        generated = [[a] * n_samples for a in answers]
    else:
        generated = []
        for i, prompt in enumerate(prompts):
            ids = torch.tensor([prompt] * n_samples, device=model.cfg.device)  # [n, pos]
            torch.manual_seed(seed + i)
            with model.hooks(fwd_hooks=list(fwd_hooks)):
                gen = model.generate(
                    ids,
                    max_new_tokens=max_new_tokens,
                    do_sample=temperature > 0,
                    temperature=max(temperature, 1e-5),
                    stop_at_eos=True,
                    eos_token_id=sorted(stops) or None,
                    verbose=False,
                )
            generated.append(gen[:, ids.shape[1] :].tolist())
    out = []
    for i, (row, seqs) in enumerate(zip(rows, generated)):
        for j, seq in enumerate(seqs):
            cut = next((k for k, t in enumerate(seq) if t in stops), len(seq))
            out.append(
                {
                    "row": i,
                    "id": row.get("id", str(i)),
                    "sample": j,
                    "prompt": _question(row),
                    "answer": tokenizer.decode(seq[:cut], skip_special_tokens=True),
                }
            )
    return pd.DataFrame(out)


@torch.inference_mode()
def greedy_batched(
    model, tokenizer, prompts: list[list[int]], max_new_tokens: int, stops: set[int]
) -> list[list[int]]:
    """Greedy continuations of token-id ``prompts`` by HF's ``generate`` on a bridge's wrapped model
    (adapters off when ``model`` is :class:`caft_tl.real.lora.AdaptersOff`), all prompts in one batch,
    left-padded with an attention mask; each continuation is cut after its first stop token."""
    import contextlib

    from caft_tl.real.lora import AdaptersOff, adapters_disabled

    pad = pad_id(tokenizer)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    inner = model._model if isinstance(model, AdaptersOff) else model
    off = adapters_disabled(inner) if isinstance(model, AdaptersOff) else contextlib.nullcontext()
    with off:
        gen = inner.original_model.generate(
            input_ids=ids.to(inner.cfg.device),
            attention_mask=mask.to(inner.cfg.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=sorted(stops) or None,
            pad_token_id=pad,
        )
    out = []
    for seq in gen[:, width:].tolist():
        cut = next((k + 1 for k, t in enumerate(seq) if t in stops), len(seq))
        out.append(seq[:cut])
    return out


def _question(row: dict) -> str:
    if "prompt" in row:
        return row["prompt"]
    return next(m["content"] for m in reversed(row["messages"]) if m["role"] == "user")


def completions_dataset(
    model,
    tokenizer,
    rows: list[dict],
    n_samples: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    max_len: int = 1024,
) -> TokenDataset:
    """The model's own answers to generic chat prompts, as a chat TokenDataset (assistant mask)."""
    samples = sample_chat(model, tokenizer, rows, n_samples, max_new_tokens, temperature, seed)
    convs = [
        rows[r]["messages"] + [{"role": "assistant", "content": a}]
        for r, a in zip(samples["row"], samples["answer"])
        if a.strip()
    ]
    if not convs:
        raise ValueError("the model produced only empty completions; raise max_new_tokens or the temperature")
    return chat_dataset(tokenizer, convs, max_len)


def judged_rates(samples: pd.DataFrame, judge) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Judge every sampled answer (``judge.judge(questions, answers)``, e.g. an LLMJudge); returns
    (per-answer table, per-question table with ``misaligned`` = HIT / (HIT + MISS) and
    ``coherent`` = share of judged answers)."""
    judged = judge.judge(list(samples["prompt"]), list(samples["answer"]))
    judged = pd.concat([samples.reset_index(drop=True), judged.drop(columns=["question", "answer"])], axis=1)
    g = judged.groupby("id", sort=False)["label"]
    per_q = pd.DataFrame(
        {
            "misaligned": g.apply(lambda x: (x == HIT).sum() / max(((x == HIT) | (x == MISS)).sum(), 1)),
            "coherent": g.apply(lambda x: ((x == HIT) | (x == MISS)).mean()),
        }
    ).reset_index()
    return judged, per_q


@torch.inference_mode()
def option_logprobs(model, tokenizer, rows: list[dict], fwd_hooks=(), batch_size: int = 16) -> torch.Tensor:
    """[n, n_options] log-probability of each option's tokens after each prompt (``-inf`` past a
    row's last option when rows have different numbers of options); a row with
    ``"scoring": "mean_logprob"`` gets the mean over its options' tokens instead (length-normalised,
    for options of different lengths: ``caft_tl.real.tasks``).

    Work is shared where the result cannot change: an option's first token is predicted from the
    prompt alone, so single-token options (letters, " positive" / " negative") are read off one
    sequence per prompt, and each multi-token option gets its own prompt + option sequence. The
    sequences are scored in batches of ``batch_size``, sorted by length and right-padded (with
    causal attention the padding after a sequence cannot change its logits, so no attention mask
    is needed), and HF models unembed only the positions that predict an option
    (``logits_to_keep``). The scores equal one forward per (prompt, option) to float error (tested
    to 1e-4). ``fwd_hooks`` must not depend on the batch shape or the sequence length (e.g.
    ``intervention.fwd_hooks()``: positions ``all``)."""
    import inspect

    from caft_tl.core.models import check_fwd_hooks
    from caft_tl.real.hf_models import is_bridge

    fwd_hooks = check_fwd_hooks(model, fwd_hooks)
    seqs: list[list[int]] = []  # token ids of each sequence to run
    reads: list[list[tuple[int, int, int, list[int]]]] = []  # per sequence: (row, option, start, option ids)
    for r, row in enumerate(rows):
        prompt = encode_prompt(tokenizer, row)
        if not prompt:
            raise ValueError(
                f"prompt of row {row.get('id', r)!r} encodes to no tokens: nothing to condition the options "
                "on"
            )
        first = len(seqs)
        single = []
        for o, opt in enumerate(row["options"]):
            ans = list(tokenizer(opt, add_special_tokens=False)["input_ids"])
            if not ans:
                raise ValueError(f"option {opt!r} of row {row.get('id', r)!r} encodes to no tokens")
            if len(ans) == 1:
                single.append((r, o, len(prompt), ans))
            else:
                seqs.append(prompt + ans)
                reads.append([(r, o, len(prompt), ans)])
        if single:
            if len(seqs) == first:  # only single-token options: the prompt alone
                seqs.append(prompt)
                reads.append([])
            reads[first] += single
    # HF models (through the bridge) can unembed only the last positions: the unembedding of a
    # 49k-token vocabulary is about a quarter of SmolLM2's compute, needed only at the options
    unembed_only_needed = (
        is_bridge(model) and "logits_to_keep" in inspect.signature(model.original_model.forward).parameters
    )
    scores = torch.full((len(rows), max((len(row["options"]) for row in rows), default=0)), float("-inf"))
    order = sorted(range(len(seqs)), key=lambda k: len(seqs[k]))
    pad, step = pad_id(tokenizer), max(1, batch_size)
    for b in range(0, len(order), step):
        chunk = order[b : b + step]
        width = max(len(seqs[k]) for k in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        for i, k in enumerate(chunk):
            ids[i, : len(seqs[k])] = torch.tensor(seqs[k])
        keep = (
            width - min(start for k in chunk for _, _, start, _ in reads[k]) + 1
        )  # positions predicting an option token
        kwargs = {"logits_to_keep": keep} if unembed_only_needed else {}
        with model.hooks(fwd_hooks=list(fwd_hooks)):
            logits = model(ids.to(model.cfg.device), **kwargs)  # [batch, keep (or width), d_vocab]
        offset = width - logits.shape[1]
        for i, k in enumerate(chunk):
            for r, o, start, ans in reads[k]:
                at = start - 1 - offset
                logp = logits[i, at : at + len(ans)].float().log_softmax(-1)  # [len(ans), d_vocab]
                total = logp.gather(-1, torch.tensor(ans, device=logp.device)[:, None]).sum().cpu()
                scores[r, o] = total / len(ans) if rows[r].get("scoring") == "mean_logprob" else total
    return scores


def mc_accuracy(
    model, tokenizer, rows: list[dict], keys: tuple[str, ...] = ("answer",), fwd_hooks=()
) -> dict[str, float]:
    """Share of rows whose highest-scoring option equals ``row[key]`` (``answer``) or
    ``row['labels'][key]`` (e.g. ``intended``, ``spurious``), for each key."""
    pred = option_logprobs(model, tokenizer, rows, fwd_hooks).argmax(-1).tolist()
    chosen = [row["options"][p] for row, p in zip(rows, pred)]
    acc = {}
    for key in keys:
        truth = [row[key] if key == "answer" else row["labels"][key] for row in rows]
        acc[key] = sum(c == t for c, t in zip(chosen, truth)) / len(rows)
    return acc


def evaluate_models(
    contenders: dict, tokenizer, setting, name: str, out_dir, judge=None, organism: str = "real:model"
) -> list[dict]:
    """Results rows (``task`` = ``name``, ``organism`` (``real:<model>``), split ``eval``; ``trained``
    false for ``base``) of each ``(method, directions) → model`` on
    ``setting``'s evaluation data, without hooks. ``chat``: ``setting.n_samples`` answers per
    question, written to ``out_dir/real_samples_<method>.csv``, and with a ``judge`` the
    misalignment rate and coherence (no rows without one). ``mc``: accuracy on each of
    ``setting.mc_keys`` from option log-probs."""
    from caft_tl.core import files, results
    from caft_tl.real.chat_data import load_mc_jsonl, load_prompts

    def result_rows(method: str, directions: str, metrics: dict) -> list[dict]:
        key = results.RowKey(name, organism, method, directions, trained=method != "base", seed=setting.seed)
        return results.rows(key, {"eval": metrics})

    rows = []
    if setting.kind == "chat":
        questions = load_prompts(setting.path("eval"))
        for (method, directions), model in contenders.items():
            samples = sample_chat(
                model,
                tokenizer,
                questions,
                setting.n_samples,
                setting.max_new_tokens,
                setting.temperature,
                setting.seed,
            )
            files.write_csv(f"{out_dir}/real_samples_{method}.csv", samples)
            if judge is not None:
                per_q = judged_rates(samples, judge)[1]
                metrics = {
                    "misalignment_rate": per_q["misaligned"].mean(),
                    "coherence": per_q["coherent"].mean(),
                }
                rows += result_rows(method, directions, metrics)
    else:
        items = load_mc_jsonl(setting.path("eval"))
        for (method, directions), model in contenders.items():
            acc = mc_accuracy(model, tokenizer, items, tuple(setting.mc_keys))
            rows += result_rows(method, directions, {f"accuracy_{k}": v for k, v in acc.items()})
    return rows
