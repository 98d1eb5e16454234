"""Peer comparison: one CAFT training step on the same tiny Qwen2-style HF checkpoint, two ways.

* **HF**: ``Qwen2ForCausalLM`` with a plain PyTorch forward hook on ``model.model.layers[L]`` that
  projects a subspace out of the layer's output, as the reference CAFT implementation does.
* **TL**: the same checkpoint booted offline through ``TransformerBridge.boot_transformers(path)``
  with caft-tl's ``zero`` intervention at ``blocks.L.hook_resid_post`` (the decoder layer's output).

The checkpoint is built locally (``tests._real.tiny_checkpoint``: ``Qwen2Config`` with small
sizes, random weights, saved to a temporary folder), so nothing is downloaded. Both use eager attention.
Reported: TL/HF median paired step time (with the ablation, and without any hook, which isolates
the bridge's own overhead) and TL/HF peak RSS increase of training steps (one subprocess each).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from benchmarks.bench_diffing import peak_rss_during
from benchmarks.common import Row, median, row, run_json_subprocess, spread, timed
from caft_tl.core.subspace import Subspace, random_subspace
from caft_tl.interventions.intervention import Intervention

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SIZES = dict(
    vocab_size=512,
    hidden_size=256,
    intermediate_size=1024,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=8,
    max_position_embeddings=64,
)
BATCH, SEQ, LAYER, K = 8, 64, 1, 8


def build_checkpoint(folder: str | Path, seed: int = 0) -> Path:
    """Save a random-weight tiny Qwen2 checkpoint to ``folder`` (once)."""
    from tests._real import tiny_checkpoint

    sizes = {k: v for k, v in SIZES.items() if k != "vocab_size"}
    return tiny_checkpoint(folder, "qwen2", seed=seed, vocab_size=SIZES["vocab_size"], **sizes)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens [BATCH, SEQ] and the loss mask (second half of each row)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, SIZES["vocab_size"], (BATCH, SEQ), generator=g)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, SEQ // 2 :] = True
    return tokens, mask


def loss_from_logits(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[:, 1:]
    return F.cross_entropy(logits[:, :-1][m], tokens[:, 1:][m])


class _TrainPath:
    """One AdamW training step on the response loss; subclasses give ``logits`` and ``opt``."""

    def step(self, tokens, mask) -> float:
        loss = loss_from_logits(self.logits(tokens), tokens, mask)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()


class HFPath(_TrainPath):
    """HF model + a forward hook on one decoder layer projecting out span(Q) (reference style)."""

    def __init__(self, folder: Path, q: torch.Tensor):
        from transformers import Qwen2ForCausalLM

        self.model = Qwen2ForCausalLM.from_pretrained(folder, attn_implementation="eager").train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-5)
        self.q = q
        self.handle = None

    def set_ablation(self, on: bool) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if on:
            self.handle = self.model.model.layers[LAYER].register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h - (h @ self.q) @ self.q.T
        return (h, *output[1:]) if isinstance(output, tuple) else h

    def logits(self, tokens):
        return self.model(input_ids=tokens).logits


class TLPath(_TrainPath):
    """The same checkpoint through TransformerBridge + caft-tl's ``zero`` intervention."""

    def __init__(self, folder: Path, q: torch.Tensor):
        from transformer_lens.model_bridge import TransformerBridge

        self.model = TransformerBridge.boot_transformers(str(folder), device="cpu")
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-5)
        self.iv = Intervention("zero", [Subspace(f"blocks.{LAYER}.hook_resid_post", q)])
        self.on = False

    def set_ablation(self, on: bool) -> None:
        self.on = on

    def logits(self, tokens):
        with self.model.hooks(fwd_hooks=self.iv.fwd_hooks() if self.on else []):
            return self.model(tokens)


def subspace_basis() -> torch.Tensor:
    return random_subspace(SIZES["hidden_size"], K, "x", seed=0).basis


def make_path(kind: str, folder: Path):
    return (HFPath if kind == "hf" else TLPath)(folder, subspace_basis())


def logit_gap(folder: Path, tokens) -> float:
    """Max |logits_TL − logits_HF| with the ablation on, before any step (same computation?)."""
    hf, tl = make_path("hf", folder), make_path("tl", folder)
    hf.set_ablation(True)
    tl.set_ablation(True)
    with torch.no_grad():
        return (hf.logits(tokens) - tl.logits(tokens)).abs().max().item()


def time_ratio(
    folder: Path, ablate: bool, rounds: int = 8, warmup: int = 2, progress: bool = True
) -> tuple[float, list[float], float]:
    """Median over rounds of TL step / adjacent HF step; returns (ratio, ratios, HF ms)."""
    tokens, mask = batch()
    paths = {k: make_path(k, folder) for k in ("hf", "tl")}
    for p in paths.values():
        p.set_ablation(ablate)
        for _ in range(warmup):
            p.step(tokens, mask)
    ratios, hf_t = [], []
    order = ["hf", "tl"]
    for _ in tqdm(
        range(rounds), desc=f"peer step time ({'ablation' if ablate else 'no hook'})", disable=not progress
    ):
        t = {}
        for k in order:
            t[k] = timed(lambda k=k: paths[k].step(tokens, mask))
        order.reverse()
        ratios.append(t["tl"] / t["hf"])
        hf_t.append(t["hf"])
    return median(ratios), ratios, median(hf_t) * 1e3


def memory_child(kind: str, folder: str) -> dict:
    """In a fresh process: peak RSS increase over 3 training steps with the ablation."""
    torch.set_num_threads(1)
    tokens, mask = batch()
    p = make_path(kind, Path(folder))
    p.set_ablation(True)
    p.step(tokens, mask)  # optimizer state, allocator pools
    before, peak = peak_rss_during(lambda: [p.step(tokens, mask) for _ in range(3)])
    n_params = sum(x.numel() for x in p.model.parameters())
    return {"kind": kind, "peak_delta": peak - before, "rss_before": before, "n_params": n_params}


def peer_rows(rounds: int = 8, progress: bool = True) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_checkpoint(Path(tmp) / "tiny-qwen2")
        tokens, _ = batch()
        gap = logit_gap(folder, tokens)
        rows = []
        shape = (
            f"Qwen2 L{SIZES['num_hidden_layers']} d{SIZES['hidden_size']} vocab {SIZES['vocab_size']}, "
            f"batch {BATCH}x{SEQ}, eager attention, 1 thread"
        )
        for ablate in (True, False):
            r, rs, hf_ms = time_ratio(folder, ablate, rounds, progress=progress)
            what = f"zero ablation k={K} at layer {LAYER}" if ablate else "no hook (bridge overhead)"
            rows.append(
                row(
                    "peer_tl_vs_hf",
                    f"step time, {what}",
                    r,
                    "<= 1.2",
                    f"median of {len(rs)} paired steps; IQR/2 {spread(rs):.1%}; HF step {hf_ms:.1f} ms; "
                    f"{shape}; max |logit gap| TL vs HF with ablation {gap:.1e}",
                )
            )
        mem = {
            k: run_json_subprocess("benchmarks.bench_peer", ["--memory", k, str(folder)])
            for k in ("hf", "tl")
        }
        rows.append(
            row(
                "peer_tl_vs_hf",
                "peak memory of 3 steps (RSS increase)",
                mem["tl"]["peak_delta"] / max(mem["hf"]["peak_delta"], 1),
                "",
                f"TL {mem['tl']['peak_delta'] / 2**20:.1f} MiB "
                f"vs HF {mem['hf']['peak_delta'] / 2**20:.1f} MiB above pre-step RSS; "
                f"resident before steps TL {mem['tl']['rss_before'] / 2**20:.0f} MiB "
                f"vs HF {mem['hf']['rss_before'] / 2**20:.0f} MiB; "
                f"params TL {mem['tl']['n_params']:,} vs HF {mem['hf']['n_params']:,}",
            )
        )
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--memory", nargs=2, metavar=("KIND", "FOLDER"))
    args = ap.parse_args()
    if args.memory:
        print(json.dumps(memory_child(*args.memory)))
    else:
        torch.set_num_threads(1)
        for r in peer_rows(rounds=3):
            print(r)
