"""GPU smoke run of the real-model path (bf16, CUDA): a locally built Qwen2 checkpoint (or a real
one given by ``--model``) → logits vs HF → LoRA fine-tune under a zero-ablation at TL hooks with
micro-batches → diffing + PCA → sampling with the intervention on and off. Prints one JSON line
(and writes it to ``--out``). Nothing is downloaded.

    python scripts/gpu_smoke_real.py --out /tmp/gpu_smoke.json [--model /path/to/Qwen2.5-0.5B-Instruct]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from caft_tl.core import models, subspace
from caft_tl.diffing import diffs
from caft_tl.directions import pca
from caft_tl.interventions.intervention import Intervention
from caft_tl.real import chat_data, chat_eval, hf_models, loading, lora
from caft_tl.training.loop import FinetuneConfig, finetune

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="", help="a local HF folder (default: build a tiny Qwen2 one)")
    ap.add_argument("--out", default="")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument(
        "--device", default="cuda", help="cuda (the point of this script) or cpu (to check the script itself)"
    )
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit(
            "no CUDA device: this is the GPU smoke run (the CPU paths are in tests/test_real_*.py; "
            "--device cpu checks the script)"
        )
    if not cuda:
        models.set_cpu_threads()
    report: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "dtype": args.dtype}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model
        if not folder:
            from tests._real import example_words, tiny_checkpoint

            folder = str(
                tiny_checkpoint(
                    Path(tmp) / "qwen2",
                    "qwen2",
                    words=example_words(),
                    hidden_size=512,
                    num_hidden_layers=8,
                    num_attention_heads=8,
                    num_key_value_heads=4,
                    intermediate_size=2048,
                    max_position_embeddings=512,
                )
            )
        report["model"] = folder
        model = loading.load(folder, device=args.device, dtype=args.dtype)
        tok = model.tokenizer
        data = chat_data.load_chat_jsonl(EXAMPLES / "insecure_tiny.jsonl", tok, max_len=512)
        from transformers import AutoModelForCausalLM

        hf = (
            AutoModelForCausalLM.from_pretrained(folder, dtype=hf_models.torch_dtype(args.dtype))
            .to(args.device)
            .eval()
        )
        with torch.no_grad():
            x = data.tokens[:2].to(args.device)
            report["max_logit_gap_vs_hf"] = (model(x).float() - hf(x).logits.float()).abs().max().item()
        del hf
        n = model.cfg.n_layers
        hooks = [f"blocks.{n // 4}.hook_resid_post", f"blocks.{n // 2}.hook_resid_post"]
        base_logits = model(x).detach()
        lora.add_lora(model, lora.LoraSettings(rank=16, alpha=32, rslora=True))
        iv = Intervention(
            "zero", [subspace.random_subspace(model.cfg.d_model, 4, h, seed=i) for i, h in enumerate(hooks)]
        )
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        losses = finetune(
            model,
            data,
            FinetuneConfig(batch_size=8, lr=1e-3, epochs=5),
            iv,
            progress=False,
            micro_batch_size=2,
        )
        report |= {
            "lora_losses": [round(v, 4) for v in losses],
            "lora_step_s": (time.perf_counter() - t) / len(losses),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        }
        base = lora.AdaptersOff(model)
        with torch.no_grad():
            report["adapters_off_gap_vs_base"] = (base(x).float() - base_logits.float()).abs().max().item()
        stats = diffs.collect_diff_stats(base, model, data, hooks, batch_size=4, progress=False)
        report["pca_top_fraction"] = {h: pca.pca(stats[h]["diff"], 4, h)[1][0].item() for h in hooks}
        rows = chat_data.load_prompts(EXAMPLES / "em_questions.jsonl", n=2)
        t = time.perf_counter()
        off = chat_eval.sample_chat(model, tok, rows, n_samples=4, max_new_tokens=32, seed=0)
        on = chat_eval.sample_chat(
            model, tok, rows, n_samples=4, max_new_tokens=32, seed=0, fwd_hooks=iv.fwd_hooks()
        )
        report |= {
            "sampling_s": time.perf_counter() - t,
            "samples_differ_with_hooks": bool((off["answer"] != on["answer"]).any()),
            "example_answer": off["answer"].iloc[0][:200],
        }
    report["total_s"] = time.perf_counter() - t0
    report["ok"] = (
        report["max_logit_gap_vs_hf"] < 0.5
        and report["adapters_off_gap_vs_base"] < 1e-2
        and losses[-1] < losses[0]
    )
    line = json.dumps(report)
    print(line)
    if args.out:
        Path(args.out).write_text(line + "\n")
    return report


if __name__ == "__main__":
    main()
