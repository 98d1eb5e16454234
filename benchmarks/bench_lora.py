"""A CAFT LoRA training step on the real model through the bridge ÷ a plain HF + peft step, and the
tokens per second of training and of evaluation (issue 34, item 5).

* **CAFT (bridge)**: the model loaded as the chapters load it (:func:`caft_tl.real.loading.load`:
  ``TransformerBridge``), LoRA adapters injected by :func:`caft_tl.real.lora.add_lora`, caft-tl's
  ``zero`` intervention at 3 layers' ``hook_resid_post`` (about 1/4, 1/2, 3/4 of the depth, as
  :meth:`caft_tl.real.experiment.RealRunConfig.hooks` picks them), the response loss of
  :func:`caft_tl.core.models.response_loss`, backward, AdamW on the adapters.
* **Plain HF + peft**: ``AutoModelForCausalLM`` from the same folder with the bridge's attention
  implementation (``eager``: HF's default ``sdpa`` is not timed, to stay within the run's minutes),
  ``peft.get_peft_model`` with the same LoRA settings and targets, no hook, the same loss on the
  same batch.

The model: the converted ``qwen2.5-coder-0.5b`` folder when the cache has it, else ``smollm2-135m``,
else a tiny random Qwen2 (``tests._real.tiny_checkpoint``); nothing is downloaded or converted. The
dtype is ``bfloat16`` where the device computes it natively, else ``float32``
(:func:`caft_tl.real.hf_models.resolve_dtype`). The batch: the first rows of the shipped
``insecure_code`` training data, cut to :data:`MAX_LEN` tokens. Evaluation tokens/s: the
``reference`` metric's scoring forward passes (:func:`caft_tl.real.chat_eval.option_logprobs`) on
``id`` rows, and greedy generation (:func:`caft_tl.real.chat_eval.greedy_batched`, the checker's path).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from benchmarks.common import Row, median, row, spread, timed
from caft_tl.core.data import TokenDataset
from caft_tl.core.models import response_loss
from caft_tl.core.subspace import random_subspace
from caft_tl.interventions.intervention import Intervention

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

#: the offline models tried in order (their converted folders in the cache); then a tiny random Qwen2
MODELS = ("qwen2.5-coder-0.5b", "smollm2-135m")
BATCH, MAX_LEN, K, RANK = 1, 96, 8, 8  # rows, tokens per row, directions per hook, LoRA rank
N_EVAL, GEN_TOKENS = 2, 16  # id rows scored / answered, and new tokens per greedy answer


def model_folder() -> tuple[Path | None, str]:
    """The first of :data:`MODELS` whose converted folder is cached (None: none is), and its name."""
    from caft_tl.real import offline_models

    for name in MODELS:
        root = offline_models.get(name).root()
        done = sorted(
            f
            for f in root.glob(f"{name}-*")
            if (f / "config.json").exists() and (f / offline_models.SOURCE_FILE).exists()
        )
        if done:
            return done[-1], name
    return None, "tiny random Qwen2 (no offline model in the cache)"


def training_batch(tokenizer) -> TokenDataset:
    """The first :data:`BATCH` insecure_code training rows with a response token, cut to :data:`MAX_LEN`."""
    from caft_tl.real import card, chat_data

    rows = chat_data.read_jsonl(card.SHIPPED["insecure_code"].parent / "train.jsonl", 4 * BATCH)
    data = chat_data.chat_dataset(tokenizer, [r["messages"] for r in rows], MAX_LEN)
    return data.subset(slice(0, BATCH)).trimmed()  # no padding column, as the training loop runs it


def ablation(model) -> Intervention:
    """``zero`` on random rank-:data:`K` subspaces at 3 layers' ``hook_resid_post``."""
    n = model.cfg.n_layers
    layers = sorted({n // 4, n // 2, (3 * n) // 4})
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    return Intervention(
        "zero", [random_subspace(model.cfg.d_model, K, h, seed=i) for i, h in enumerate(hooks)]
    )


def _adamw(model) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)


class BridgeCAFT:
    """The chapters' path: bridge + add_lora + the ``zero`` ablation at 3 layers."""

    def __init__(self, folder: Path, dtype: str):
        from caft_tl.real import loading, lora

        self.model = lora.add_lora(
            loading.load(folder, device="cpu", dtype=dtype), lora.LoraSettings(RANK, 2.0 * RANK)
        )
        self.model.train()
        self.iv = ablation(self.model)
        self.opt = _adamw(self.model)

    def step(self, batch: TokenDataset) -> float:
        self.opt.zero_grad(set_to_none=True)
        with self.model.hooks(fwd_hooks=self.iv.fwd_hooks(batch)):
            loss = response_loss(self.model, batch)
        loss.backward()
        self.opt.step()
        return loss.item()


class PlainPeft:
    """``AutoModelForCausalLM`` + ``peft.get_peft_model`` (same rank, α, rsLoRA, targets), no hook."""

    def __init__(self, folder: Path, dtype: str, attention: str):
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        from caft_tl.real import lora
        from caft_tl.real.hf_models import torch_dtype

        hf = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch_dtype(dtype), attn_implementation=attention
        )
        cfg = LoraConfig(
            r=RANK, lora_alpha=2.0 * RANK, use_rslora=True, target_modules=list(lora.DEFAULT_TARGETS)
        )
        self.model = get_peft_model(hf, cfg).train()
        self.opt = _adamw(self.model)

    def step(self, batch: TokenDataset) -> float:
        self.opt.zero_grad(set_to_none=True)
        logits = self.model(input_ids=batch.tokens).logits  # [batch, pos, d_vocab]
        mask = batch.target_mask[:, :-1]
        loss = F.cross_entropy(logits[:, :-1][mask].float(), batch.tokens[:, 1:][mask])
        loss.backward()
        self.opt.step()
        return loss.item()


def step_pairs(
    caft: BridgeCAFT, plain: PlainPeft, batch: TokenDataset, rounds: int
) -> dict[str, list[float]]:
    """Seconds of each round's CAFT step and adjacent plain step (``caft``, ``plain``), the pair's
    order alternating; one warm-up step each first (optimiser state, allocator pools)."""
    out = {"caft": [], "plain": []}
    caft.step(batch)
    plain.step(batch)
    for r in tqdm(range(rounds), desc="lora step pairs", leave=False):
        order = (("caft", caft), ("plain", plain)) if r % 2 else (("plain", plain), ("caft", caft))
        for key, path in order:
            out[key].append(timed(lambda path=path: path.step(batch)))
    return out


def eval_tokens_per_s(model, tokenizer) -> dict[str, tuple[float, int]]:
    """``{what: (tokens/s, tokens)}`` of the reference metric's scoring passes and of greedy answers
    on the first :data:`N_EVAL` ``id`` rows, adapters on, no hook (as a fine-tune is evaluated); each
    after a short untimed warm-up call."""
    from caft_tl.real import card, chat_data, chat_eval, metric_kinds

    model.eval()
    rows = chat_data.read_jsonl(card.SHIPPED["insecure_code"].parent / "id.jsonl", N_EVAL)
    prompts = [chat_data.encode_prompt(tokenizer, r) for r in rows]
    n_options = sum(
        len(tokenizer(r[k], add_special_tokens=False)["input_ids"])
        for r in rows
        for k in ("aligned", "misaligned")
    )
    # each multi-token option is scored in a sequence of its own: prompt + option
    scored = 2 * sum(map(len, prompts)) + n_options
    reference, stops = metric_kinds.get("reference"), chat_eval.stop_ids(tokenizer)
    reference.score(model, tokenizer, rows[:1], "id", ())
    chat_eval.greedy_batched(model, tokenizer, prompts[:1], 2, stops)
    t0 = time.perf_counter()
    reference.score(model, tokenizer, rows, "id", ())
    score_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    answers = chat_eval.greedy_batched(model, tokenizer, prompts, GEN_TOKENS, stops)
    gen_s = time.perf_counter() - t0
    new = sum(map(len, answers))
    return {
        "reference scoring (forward)": (scored / score_s, scored),
        "greedy generation": (new / gen_s, new),
    }


def lora_rows(rounds: int = 5) -> list[Row]:
    from caft_tl.real.hf_models import resolve_dtype

    with tempfile.TemporaryDirectory() as tmp:
        folder, name = model_folder()
        if folder is None:
            from tests._real import tiny_checkpoint

            folder = tiny_checkpoint(Path(tmp) / "tiny-qwen2", "qwen2", hidden_size=64, num_hidden_layers=4)
        dtype = resolve_dtype("auto", "cpu")
        caft = BridgeCAFT(folder, dtype)
        attention = caft.model.original_model.config._attn_implementation
        plain = PlainPeft(folder, dtype, attention)
        batch = training_batch(caft.model.tokenizer)
        tokens = int(batch.tokens.numel())
        t = step_pairs(caft, plain, batch, rounds)
        evals = eval_tokens_per_s(caft.model, caft.model.tokenizer)
    shape = (
        f"{name}, {dtype}, {attention} attention, CPU, 1 thread; batch {BATCH} insecure_code row(s) = "
        f"{tokens} tokens; LoRA r{RANK} alpha {2 * RANK} rsLoRA on the 7 projections of "
        f"{caft.model.cfg.n_layers} blocks; zero ablation k={K} at blocks "
        + ", ".join(s.hook_name.split(".")[1] for s in caft.iv.subspaces)
        + " (hook_resid_post)"
    )
    rs = [c / p for c, p in zip(t["caft"], t["plain"])]
    rows = [
        row(
            "lora_step",
            "CAFT bridge step / HF + peft step",
            median(rs),
            "<= 1.10",
            f"median of {len(rs)} paired steps (range {min(rs):.3f} to {max(rs):.3f}, "
            f"IQR/2 {spread(rs):.1%}); CAFT step {median(t['caft']):.2f} s, "
            f"plain {median(t['plain']):.2f} s; {shape}",
        )
    ]
    train = {"CAFT bridge step": tokens / median(t["caft"]), "HF + peft step": tokens / median(t["plain"])}
    for what, value in train.items():
        detail = f"tokens/s: batch tokens / median step seconds; {shape}"
        rows.append(row("lora_tokens_per_s", f"train: {what}", value, "", detail))
    for what, (value, n) in evals.items():
        rows.append(
            row(
                "lora_tokens_per_s",
                f"eval: {what}",
                value,
                "",
                f"tokens/s over {n} tokens, {N_EVAL} id rows, bridge, adapters on, no hook"
                + (f", <= {GEN_TOKENS} new tokens each, one batch" if "greedy" in what else "")
                + f"; {name}, {dtype}",
            )
        )
    return rows


if __name__ == "__main__":
    torch.set_num_threads(1)
    for r in lora_rows():
        print(r)
