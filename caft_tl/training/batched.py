"""Many independent trainings of one organism architecture as one stacked computation.

An organism training step is overhead (many small ops, hooks, a per-tensor optimiser), not
arithmetic. Here R runs of one :class:`~transformer_lens.HookedTransformer` design train at once:

- :class:`Stack` holds the R runs' parameters in one flat ``[R, P]`` buffer (member-major), with a
  ``[R, *shape]`` leaf view per parameter whose ``.grad`` is a view of one flat gradient buffer;
- :func:`stacked_forward` is the HookedTransformer forward pass written with batched matmuls over
  a leading run dimension (``tokens [R, B, T]`` → ``logits [R, B, T, d_vocab]``), with hooks at the
  d_model-wide hook points (:data:`HOOKS`); :func:`batchable` checks a model against it numerically;
- :class:`StackedAdamW` is ``torch.optim.AdamW``'s update on the flat buffers, with each member's
  own learning rate, weight decay and step count;
- :class:`StackedInterventions` applies each member's own intervention (mode, subspaces at its
  hooks, μ, scale, positions) by running each registered mode function under ``torch.func.vmap``
  over the members and selecting per member (ranks padded with zero columns, hooks as masks);
- :func:`finetune_batched` is :func:`caft_tl.training.loop.finetune` for R members (each its own
  data, batch order, seed, config, KL-to-base term), :func:`pretrain_batched` is
  :func:`caft_tl.training.pretrain.pretrain` for R seeds.

Members run in order of decreasing step count, so the members still training are always a
prefix of the stack and a finished member costs nothing.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from safetensors.torch import safe_open, save_file
from tqdm.auto import tqdm

from caft_tl.core import files
from caft_tl.core.data import TokenDataset
from caft_tl.core.models import kl_rows
from caft_tl.interventions.modes import get_mode
from caft_tl.training.loop import first_rows
from caft_tl.training.monitor import MonitorLog, StackedMonitor, chain

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

#: the hook points the stacked forward pass offers (``{l}`` a layer); all are [.., d_model] wide
HOOKS = (
    "hook_embed",
    "hook_pos_embed",
    "blocks.{l}.hook_resid_pre",
    "blocks.{l}.hook_attn_out",
    "blocks.{l}.hook_resid_mid",
    "blocks.{l}.hook_mlp_out",
    "blocks.{l}.hook_resid_post",
)

_ACTS = {"gelu": F.gelu, "relu": F.relu}


def hook_names(n_layers: int) -> list[str]:
    """Every hook name :func:`stacked_forward` applies hooks at, for ``n_layers`` blocks."""
    return [h.format(l=l) for h in HOOKS for l in (range(n_layers) if "{l}" in h else [0])]


# --------------------------------------------------------------------------- the stacked model


class Stack:
    """R copies of a model's parameters: ``flat [R, P]``, ``grad [R, P]`` and a leaf view
    ``params[name] [R, *shape]`` per parameter (its ``.grad`` a view of ``grad``)."""

    def __init__(self, model: torch.nn.Module, states: list[dict[str, torch.Tensor]]):
        named = list(model.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = {n: tuple(p.shape) for n, p in named}
        self.R = len(states)
        sizes = [math.prod(self.shapes[n]) for n in self.names]
        self.P = sum(sizes)
        dev, dtype = named[0][1].device, named[0][1].dtype
        self.flat = torch.empty(self.R, self.P, device=dev, dtype=dtype)
        self.grad = torch.zeros_like(self.flat)
        self.params: dict[str, torch.Tensor] = {}
        self.slices: dict[str, slice] = {}
        off = 0
        for n, size in zip(self.names, sizes):
            self.slices[n] = slice(off, off + size)
            off += size
        for r, state in enumerate(states):
            self.flat[r] = torch.cat([state[n].detach().reshape(-1).to(dev, dtype) for n in self.names])
        for n in self.names:
            v = self.flat[:, self.slices[n]].view(self.R, *self.shapes[n])
            v.requires_grad_(True)
            v.grad = self.grad[:, self.slices[n]].view(self.R, *self.shapes[n])
            self.params[n] = v

    def state(self, r: int) -> dict[str, torch.Tensor]:
        """Member ``r``'s parameters as a state dict (copies, on the CPU)."""
        return {
            n: self.flat[r, self.slices[n]].detach().view(self.shapes[n]).cpu().clone() for n in self.names
        }

    def prefix(self, k: int) -> dict[str, torch.Tensor]:
        return self.params if k == self.R else {n: v[:k] for n, v in self.params.items()}


class StackedAdamW:
    """``torch.optim.AdamW`` (single-tensor update) on a :class:`Stack`, per member ``lr`` and
    ``weight_decay``; :meth:`step` updates the first ``k`` members (those still training)."""

    def __init__(
        self,
        stack: Stack,
        lr: list[float],
        weight_decay: list[float],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        self.stack, self.betas, self.eps = stack, betas, eps
        dev = stack.flat.device
        self.lr = torch.tensor(lr, dtype=torch.float64, device=dev)[:, None]
        self.wd = torch.tensor(weight_decay, dtype=torch.float64, device=dev)[:, None]
        self.exp_avg = torch.zeros_like(stack.flat)
        self.exp_avg_sq = torch.zeros_like(stack.flat)
        self.steps = torch.zeros(stack.R, dtype=torch.long)  # per member

    @torch.no_grad()
    def step(self, k: int, lr_factor: float = 1.0) -> None:
        """One AdamW step of the first ``k`` members (all at the same step count: they are the
        prefix still training), in blocks of members that fit in cache."""
        b1, b2 = self.betas
        self.steps[:k] += 1
        step = int(self.steps[0])
        bc1, bc2_sqrt = 1 - b1**step, (1 - b2**step) ** 0.5
        lr = self.lr[:k] * lr_factor  # [k, 1] float64
        wd = self.wd[:k]
        same_lr = bool((lr == lr[0]).all())
        decay = (1 - lr * wd).to(self.stack.flat.dtype)
        any_wd = bool((wd != 0).any())
        size = max(1, self.BLOCK // self.stack.P)
        for a in range(0, k, size):
            b = min(k, a + size)
            p, g = self.stack.flat[a:b], self.stack.grad[a:b]
            m, v = self.exp_avg[a:b], self.exp_avg_sq[a:b]
            if any_wd:
                p.mul_(decay[a:b])
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
            if same_lr:
                p.addcdiv_(m, denom, value=-float(lr[0]) / bc1)
            else:
                p.sub_((lr[a:b] / bc1).to(p.dtype) * m / denom)

    BLOCK = 1 << 18  #: parameters per block of the update (~1 MiB a buffer)

    def state(self) -> dict[str, torch.Tensor]:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "steps": self.steps}

    def load(self, t: dict[str, torch.Tensor]) -> None:
        self.exp_avg.copy_(t["exp_avg"])
        self.exp_avg_sq.copy_(t["exp_avg_sq"])
        self.steps.copy_(t["steps"])


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    # as transformer_lens.components.LayerNorm; x [R, ..., d], w, b [R, d]
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    x = x - x.mean(-1, keepdim=True)
    scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return (x / scale) * w.view(shape) + b.view(shape)


def stacked_forward(
    cfg,
    W: dict[str, torch.Tensor],
    tokens: torch.Tensor,
    hooks: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> torch.Tensor:
    """The HookedTransformer forward pass for R members at once: ``tokens [R, B, T]`` →
    ``logits [R, B, T, d_vocab]``; ``W`` the members' parameters ``[R, *shape]`` by TL name;
    ``hooks[name](h [R, B, T, d_model])`` → new h at the points of :data:`HOOKS`."""
    hooks = hooks or {}

    def hk(name, h):
        fn = hooks.get(name)
        return h if fn is None else fn(h)

    R, B, T = tokens.shape
    d, V, H, dh = cfg.d_model, cfg.d_vocab, cfg.n_heads, cfg.d_head
    offsets = torch.arange(R, device=tokens.device)[:, None, None] * V
    resid = hk("hook_embed", F.embedding(tokens + offsets, W["embed.W_E"].reshape(R * V, d)))
    pos = hk("hook_pos_embed", W["pos_embed.W_pos"][:, None, :T].expand(R, B, T, d))
    resid = resid + pos
    act = _ACTS[cfg.act_fn]
    scale = cfg.attn_scale if getattr(cfg, "attn_scale", -1.0) > 0 else math.sqrt(dh)
    for l in range(cfg.n_layers):
        p = f"blocks.{l}."
        resid = hk(p + "hook_resid_pre", resid)
        x = _layer_norm(resid, W[p + "ln1.w"], W[p + "ln1.b"], cfg.eps).reshape(R, B * T, d)
        w_qkv = torch.cat([W[p + "attn.W_Q"], W[p + "attn.W_K"], W[p + "attn.W_V"]], 1)  # [R, 3H, d, dh]
        w_qkv = w_qkv.permute(0, 2, 1, 3).reshape(R, d, 3 * H * dh)
        b_qkv = torch.cat([W[p + "attn.b_Q"], W[p + "attn.b_K"], W[p + "attn.b_V"]], 1).reshape(
            R, 1, 3 * H * dh
        )
        qkv = (
            torch.baddbmm(b_qkv, x, w_qkv).view(R, B, T, 3, H, dh).permute(3, 0, 1, 4, 2, 5)
        )  # [3, R, B, H, T, dh]
        q, k, v = (t.reshape(R * B, H, T, dh) for t in qkv)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / scale)  # [R B, H, T, dh]
        z = z.view(R, B, H, T, dh).permute(0, 1, 3, 2, 4).reshape(R, B * T, H * dh)
        attn = torch.baddbmm(W[p + "attn.b_O"][:, None], z, W[p + "attn.W_O"].reshape(R, H * dh, d))
        resid = hk(p + "hook_resid_mid", resid + hk(p + "hook_attn_out", attn.view(R, B, T, d)))
        x = _layer_norm(resid, W[p + "ln2.w"], W[p + "ln2.b"], cfg.eps).reshape(R, B * T, d)
        x = act(torch.baddbmm(W[p + "mlp.b_in"][:, None], x, W[p + "mlp.W_in"]))
        mlp = torch.baddbmm(W[p + "mlp.b_out"][:, None], x, W[p + "mlp.W_out"])
        resid = hk(p + "hook_resid_post", resid + hk(p + "hook_mlp_out", mlp.view(R, B, T, d)))
    x = _layer_norm(resid, W["ln_final.w"], W["ln_final.b"], cfg.eps).reshape(R, B * T, d)
    return torch.baddbmm(W["unembed.b_U"][:, None], x, W["unembed.W_U"]).view(R, B, T, -1)


_CHECKED: dict[tuple, str | None] = {}


def batchable(model) -> str | None:
    """None when ``model`` trains on the stacked path, else why not (a real model, another
    architecture, a forward pass that differs from TL's on random tokens)."""
    from transformer_lens import HookedTransformer

    if not isinstance(model, HookedTransformer):
        return f"{type(model).__name__} is not a HookedTransformer"
    c = model.cfg
    wrong = {
        "normalization_type": ("LN",),
        "positional_embedding_type": ("standard",),
        "act_fn": tuple(_ACTS),
        "attn_only": (False,),
        "parallel_attn_mlp": (False,),
        "n_key_value_heads": (None,),
        "gated_mlp": (False,),
        "final_rms": (False,),
        "attention_dir": ("causal",),
        "use_local_attn": (False,),
        "dtype": (torch.float32,),
        "original_architecture": (None,),
        "use_attn_scale": (True,),
        "use_normalization_before_and_after": (False,),
        "use_qk_norm": (False,),
        "use_attention_sinks": (False,),
        "output_logits_soft_cap": (-1.0, 0.0, None),
        "attn_scores_soft_cap": (-1.0, 0.0, None),
    }
    for key, ok in wrong.items():
        if hasattr(c, key) and getattr(c, key) not in ok:
            return f"cfg.{key}={getattr(c, key)!r}"
    if getattr(c, "d_vocab_out", c.d_vocab) != c.d_vocab:
        return "d_vocab_out != d_vocab"
    names = [n for n, _ in model.named_parameters()]
    key = (id(model), tuple(names))
    if key not in _CHECKED:
        _CHECKED[key] = _numeric_check(model)
    return _CHECKED[key]


@torch.no_grad()
def _numeric_check(model: HookedTransformer) -> str | None:
    expected = {
        f"blocks.{l}.{n}"
        for l in range(model.cfg.n_layers)
        for n in (
            "ln1.w",
            "ln1.b",
            "ln2.w",
            "ln2.b",
            "attn.W_Q",
            "attn.W_K",
            "attn.W_V",
            "attn.W_O",
            "attn.b_Q",
            "attn.b_K",
            "attn.b_V",
            "attn.b_O",
            "mlp.W_in",
            "mlp.b_in",
            "mlp.W_out",
            "mlp.b_out",
        )
    } | {"embed.W_E", "pos_embed.W_pos", "ln_final.w", "ln_final.b", "unembed.W_U", "unembed.b_U"}
    names = {n for n, _ in model.named_parameters()}
    if names != expected:
        return f"parameters differ from the organism design: {sorted(names ^ expected)[:3]}"
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 3, min(model.cfg.n_ctx, 5)), generator=g).to(
        model.cfg.device
    )
    W = {n: p.detach()[None].expand(2, *p.shape) for n, p in model.named_parameters()}
    got = stacked_forward(model.cfg, W, tokens)
    want = model(tokens[0])
    err = (got[0] - want).abs().max().item()
    return (
        None
        if err <= 1e-4 * max(1.0, want.abs().max().item())
        else f"stacked forward differs from TL by {err:.2g}"
    )


def stacked_loss(logits: torch.Tensor, tokens: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """[R] mean next-token cross-entropy over each member's target positions
    (:func:`caft_tl.core.models.response_loss` per member)."""
    R = logits.shape[0]
    ce = F.cross_entropy(
        logits[:, :, :-1].flatten(0, 2).float(), tokens[:, :, 1:].flatten(), reduction="none"
    )
    mask = target_mask[:, :, :-1].reshape(R, -1).to(ce.dtype)
    return (ce.view(R, -1) * mask).sum(1) / mask.sum(1)


# --------------------------------------------------------------------------- interventions


class StackedInterventions:
    """One intervention (or None) per member as stacked hooks: at each hook any member uses, a
    basis ``[R, d_model, k_max]`` (zero columns pad smaller ranks and fill members without a
    subspace there), μ ``[R, d_model]``, scale ``[R]``, and per mode a member mask."""

    def __init__(self, interventions: list, d_model: int, device, dtype: torch.dtype = torch.float32):
        self.R = len(interventions)
        self.device = device
        names = list(dict.fromkeys(h for iv in interventions if iv is not None for h in iv.hook_names))
        modes = list(dict.fromkeys(iv.mode for iv in interventions if iv is not None))
        self.positions = [iv.positions if iv is not None else "all" for iv in interventions]
        self.hooks: dict[str, dict] = {}
        for name in names:
            subs = [
                next((s for s in iv.subspaces if s.hook_name == name), None) if iv is not None else None
                for iv in interventions
            ]
            k = max(s.k for s in subs if s is not None)
            q = torch.zeros(self.R, d_model, k, dtype=dtype)
            mu = torch.zeros(self.R, d_model, dtype=dtype)
            for r, s in enumerate(subs):
                if s is not None:
                    q[r, :, : s.k] = s.check_intact().basis.to(dtype)
                    if s.reference_mean is not None:
                        mu[r] = s.reference_mean.to(dtype)
            scale = torch.tensor(
                [float(iv.scale) if iv is not None else 0.0 for iv in interventions], dtype=dtype
            )
            sel = {
                m: torch.tensor([s is not None and interventions[r].mode == m for r, s in enumerate(subs)])
                for m in modes
            }
            self.hooks[name] = {
                "q": q.to(device),
                "mu": mu.to(device),
                "scale": scale.to(device),
                "sel": {m: v.to(device) for m, v in sel.items() if bool(v.any())},
            }

    def fwd_hooks(self, target_mask: torch.Tensor, k: int | None = None) -> dict[str, Callable]:
        """Hooks for :func:`stacked_forward` on a batch with ``target_mask [k, B, T]`` (the first
        ``k`` members)."""
        k = target_mask.shape[0] if k is None else k
        masks = {"all": torch.ones_like(target_mask), "response": target_mask, "prompt": ~target_mask}
        pos = torch.stack([masks[self.positions[r]][r] for r in range(k)])  # [k, B, T]
        return {name: (lambda h, spec=spec: _apply(h, spec, pos, k)) for name, spec in self.hooks.items()}


def _apply(h: torch.Tensor, spec: dict, pos: torch.Tensor, k: int) -> torch.Tensor:
    R, B, T, d = h.shape
    flat = h.reshape(R, B * T, d)
    out = h
    for mode, sel in spec["sel"].items():
        sel = sel[:k]
        if not bool(sel.any()):
            continue
        fn = get_mode(mode).fn
        new = torch.func.vmap(fn, in_dims=(0, 0, 0, 0))(
            flat, spec["q"][:k], spec["mu"][:k], spec["scale"][:k]
        )
        out = torch.where((sel[:, None, None] & pos)[..., None], new.view(R, B, T, d), out)
    return out


# --------------------------------------------------------------------------- fine-tuning


@dataclass
class _Schedule:
    """Every step's rows of every member, padded: tokens ``[R, S, B, T]``, target mask, the number
    of steps per member and the width each step needs."""

    tokens: torch.Tensor
    target: torch.Tensor
    steps: list[int]
    widths: torch.Tensor  # [R, S]
    base: dict[str, torch.Tensor] | None = (
        None  # the KL reference's parameters, [R, *shape] each (KL schedules only)
    )


def _schedule(datas: list[TokenDataset], cfgs) -> _Schedule:
    """The batch order of :func:`caft_tl.training.loop.finetune` for each member: per epoch a
    ``randperm`` from a generator seeded with the member's seed, ``batch_size`` rows a step."""
    R = len(datas)
    steps = [c.epochs * math.ceil(len(d) / c.batch_size) for d, c in zip(datas, cfgs)]
    S, Bm, T = max(steps), max(c.batch_size for c in cfgs), max(d.tokens.shape[1] for d in datas)
    tokens = torch.zeros(R, S, Bm, T, dtype=torch.long)
    target = torch.zeros(R, S, Bm, T, dtype=torch.bool)
    widths = torch.zeros(R, S, dtype=torch.long)
    for r, (data, cfg) in enumerate(zip(datas, cfgs)):
        gen = torch.Generator().manual_seed(cfg.seed)
        per_epoch = math.ceil(len(data) / cfg.batch_size)
        tm = data.target_mask
        length = data.labels.get("length")
        for epoch in range(cfg.epochs):
            order = torch.randperm(len(data), generator=gen)
            for i in range(per_epoch):
                idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                s = epoch * per_epoch + i
                w = (
                    data.tokens.shape[1]
                    if length is None
                    else min(int(length[idx].max()), data.tokens.shape[1])
                )
                tokens[r, s, : len(idx), : data.tokens.shape[1]] = data.tokens[idx]
                target[r, s, : len(idx), :w] = tm[idx][:, :w]  # as trimmed(): the mask of the kept columns
                widths[r, s] = w
    return _Schedule(tokens, target, steps, widths)


def _kl_schedule(base, references: list[TokenDataset | None], cfgs, steps: list[int]) -> _Schedule | None:
    """The generic documents :func:`caft_tl.training.loop.finetune` reads for the KL-to-base term at
    each step of each member (its ``batch_size`` rows after the last, cycled; none where β is 0),
    padded like :func:`_schedule` and on ``base``'s device, with its parameters stacked R times (the
    reference goes through the members' own kernels, so at step 0 its logits equal theirs bit for bit);
    None when no member has β > 0."""
    if not any(c.kl_to_base for c in cfgs):
        return None
    R, S, Bm = len(cfgs), max(steps), max(c.batch_size for c in cfgs)
    T = max(d.tokens.shape[1] for d, c in zip(references, cfgs) if c.kl_to_base)
    tokens = torch.zeros(R, S, Bm, T, dtype=torch.long)
    target = torch.zeros(R, S, Bm, T, dtype=torch.bool)
    widths = torch.ones(R, S, dtype=torch.long)
    for r, (docs, cfg) in enumerate(zip(references, cfgs)):
        if not cfg.kl_to_base:
            continue
        for s in range(steps[r]):
            part = docs.subset((torch.arange(cfg.batch_size) + s * cfg.batch_size) % len(docs)).trimmed()
            b, w = part.tokens.shape
            tokens[r, s, :b, :w], target[r, s, :b, :w], widths[r, s] = part.tokens, part.target_mask, w
    stacked_base = {n: p.detach()[None].expand(R, *p.shape).contiguous() for n, p in base.named_parameters()}
    dev = base.cfg.device
    return _Schedule(tokens.to(dev), target.to(dev), steps, widths, stacked_base)


def stacked_kl(
    logits: torch.Tensor, reference_logits: torch.Tensor, target_mask: torch.Tensor
) -> torch.Tensor:
    """[R] mean KL(reference ‖ member) over each member's target positions
    (:func:`caft_tl.core.models.kl_to_reference` per member); 0 for a member without targets."""
    kl = kl_rows(logits[:, :, :-1], reference_logits[:, :, :-1])  # [R, B, T-1]
    mask = target_mask[:, :, :-1].to(kl.dtype)
    return (kl * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1)


def finetune_batched(
    base: HookedTransformer,
    datas: list[TokenDataset],
    cfgs: list,
    interventions: list | None = None,
    progress: bool = True,
    desc: str = "batched fine-tune",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 25,
    references: list[TokenDataset | None] | None = None,
    monitors: list[MonitorLog | None] | None = None,
) -> tuple[list[dict[str, torch.Tensor]], list[list[float]]]:
    """:func:`caft_tl.training.loop.finetune` for R members at once, each from ``base`` with its own
    data, :class:`~caft_tl.training.loop.FinetuneConfig` (seed, batch order, lr, weight decay,
    epochs, examples, KL-to-base β) and intervention. Returns each member's final state dict and
    losses per step (the task's cross-entropy alone, as the loop's).

    A member with ``kl_to_base`` β > 0 adds β · KL(base ‖ member) on its generic documents
    (``references[r]``, e.g. :func:`caft_tl.training.finetunes.kl_inputs`' ``reference_data``) under its
    intervention, as the loop does with ``base`` as the frozen reference.

    ``monitors[r]`` (a :class:`~caft_tl.training.monitor.MonitorLog` or None) receives member r's
    readings, as the loop's ``monitor`` does (reading hooks before the intervention's, detached).

    With ``checkpoint`` (a file), the whole group (weights, optimiser, step, losses, readings) is saved
    there every ``checkpoint_every`` steps and a call that finds it resumes from it.
    """
    R = len(datas)
    interventions = interventions or [None] * R
    if not (len(cfgs) == len(interventions) == R) or R == 0:
        raise ValueError(
            f"{R} datasets, {len(cfgs)} configs and {len(interventions)} interventions; need one of each per "
            "member"
        )
    for d in datas:
        if len(d) == 0:
            raise ValueError("fine-tuning dataset is empty")
    datas = [first_rows(d, c.n_examples) for d, c in zip(datas, cfgs)]  # as the loop: cfg.n_examples rows
    references = references or [None] * R
    monitors = monitors or [None] * R
    if len(monitors) != R:
        raise ValueError(f"{len(monitors)} monitors for {R} members; need one (or None) per member")
    if len(references) != R:
        raise ValueError(
            f"{len(references)} reference document sets for {R} members; need one (or None) per member"
        )
    for c, docs in zip(cfgs, references):
        if not (isinstance(c.kl_to_base, (int, float)) and math.isfinite(c.kl_to_base) and c.kl_to_base >= 0):
            raise ValueError(f"FinetuneConfig.kl_to_base = {c.kl_to_base!r}; expected a finite number >= 0")
        if c.kl_to_base and (docs is None or len(docs) == 0):
            raise ValueError(
                f"FinetuneConfig.kl_to_base = {c.kl_to_base} (seed {c.seed}) needs generic documents "
                "(references)"
            )
    why = batchable(base)
    if why is not None:
        raise ValueError(f"this model does not train on the batched path: {why}")
    # members in order of decreasing steps: the ones still training are a prefix
    steps = [c.epochs * math.ceil(len(d) / c.batch_size) for d, c in zip(datas, cfgs)]
    order = sorted(range(R), key=lambda r: -steps[r])
    datas, cfgs, ivs = [datas[r] for r in order], [cfgs[r] for r in order], [interventions[r] for r in order]
    references = [references[r] for r in order]
    logs = [monitors[r] for r in order]
    dev = base.cfg.device
    sched = _schedule(datas, cfgs)
    kl_sched = _kl_schedule(base, references, cfgs, sched.steps)
    beta = torch.tensor([float(c.kl_to_base) for c in cfgs], device=dev)
    base_state = {n: p.detach() for n, p in base.named_parameters()}
    stack = Stack(base, [base_state] * R)
    opt = StackedAdamW(stack, [c.lr for c in cfgs], [c.weight_decay for c in cfgs])
    stacked_ivs = (
        StackedInterventions(ivs, base.cfg.d_model, dev) if any(iv is not None for iv in ivs) else None
    )
    losses = torch.zeros(R, max(sched.steps))
    stacked_monitor = (
        StackedMonitor(
            [m.monitor if m is not None else None for m in logs], max(sched.steps), base.cfg.d_model, dev
        )
        if any(m is not None for m in logs)
        else None
    )
    step = 0
    if checkpoint is not None and Path(checkpoint).exists():
        step = _load_group(checkpoint, stack, opt, losses, stacked_monitor)
    n_steps = max(sched.steps)
    n_active = torch.tensor(sched.steps)
    bar = tqdm(total=n_steps, initial=step, desc=desc, disable=not progress, leave=False)
    tokens_all, target_all = sched.tokens.to(dev), sched.target.to(dev)
    while step < n_steps:
        k = int((n_active > step).sum())
        w = int(sched.widths[:k, step].max())
        tokens, target = tokens_all[:k, step, :, :w], target_all[:k, step, :, :w]
        hooks = stacked_ivs.fwd_hooks(target, k) if stacked_ivs is not None else None
        if stacked_monitor is not None and stacked_monitor.due(step, k):  # reading first, then the edit
            hooks = chain(stacked_monitor.fwd_hooks(target, step), hooks)
        logits = stacked_forward(base.cfg, stack.prefix(k), tokens, hooks)
        loss = stacked_loss(logits, tokens, target)
        total = loss.sum()
        if kl_sched is not None and bool((beta[:k] > 0).any()):
            total = total + (beta[:k] * _kl_term(base, stack, stacked_ivs, kl_sched, k, step)).sum()
        stack.grad[:k].zero_()
        _backward(total)
        values = loss.detach().cpu()
        if not bool(torch.isfinite(values).all()):
            r = int((~torch.isfinite(values)).nonzero()[0])
            raise FloatingPointError(
                f"loss is {values[r].item()} at step {step} (lr={cfgs[r].lr}) of member "
                f"seed={cfgs[r].seed}; lower the learning rate"
            )
        opt.step(k)
        losses[:k, step] = values
        step += 1
        bar.update()
        if checkpoint is not None and step % checkpoint_every == 0 and step < n_steps:
            _save_group(checkpoint, stack, opt, losses, step, stacked_monitor)
    bar.close()
    out_states, out_losses = [None] * R, [None] * R
    for i, r in enumerate(order):
        out_states[r] = stack.state(i)
        out_losses[r] = losses[i, : sched.steps[i]].tolist()
        if logs[i] is not None:
            logs[i].load(stacked_monitor.state(i, sched.steps[i]))
    return out_states, out_losses


def _kl_term(base, stack: Stack, stacked_ivs, kl_sched: _Schedule, k: int, step: int) -> torch.Tensor:
    """[k] KL(base ‖ member) on each of the first ``k`` members' generic documents of ``step``."""
    w = int(kl_sched.widths[:k, step].max())
    tokens, target = kl_sched.tokens[:k, step, :, :w], kl_sched.target[:k, step, :, :w]
    with torch.no_grad():
        reference = stacked_forward(base.cfg, {n: p[:k] for n, p in kl_sched.base.items()}, tokens)
    hooks = stacked_ivs.fwd_hooks(target, k) if stacked_ivs is not None else None
    return stacked_kl(stacked_forward(base.cfg, stack.prefix(k), tokens, hooks), reference, target)


def _backward(loss: torch.Tensor) -> None:
    with warnings.catch_warnings():  # the gradients are strided views of the flat buffer, on purpose
        warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
        loss.backward()


def _save_group(
    path, stack: Stack, opt: StackedAdamW, losses: torch.Tensor, step: int, monitor: StackedMonitor | None
) -> None:
    tensors = {
        "flat": stack.flat.detach().cpu().contiguous(),
        "losses": losses.contiguous(),
        **{f"optim.{k}": v.detach().cpu().contiguous() for k, v in opt.state().items()},
    }
    if monitor is not None:
        tensors["monitor"] = monitor.values.cpu().contiguous()
    with files.atomic_path(path) as tmp:
        save_file(
            tensors,
            str(tmp),
            metadata={"step": json.dumps(step), "shape": json.dumps(list(stack.flat.shape))},
        )


def _load_group(
    path, stack: Stack, opt: StackedAdamW, losses: torch.Tensor, monitor: StackedMonitor | None
) -> int:
    t = files.read_tensors(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    readings = t.get("monitor", torch.empty(0))
    if (
        "step" not in meta
        or tuple(t.get("flat", torch.empty(0)).shape) != tuple(stack.flat.shape)
        or (monitor is not None and readings.shape != monitor.values.shape)
    ):
        raise files.CorruptFileError(
            f"group checkpoint {str(path)!r} does not match this group; delete it to restart"
        )
    with torch.no_grad():
        stack.flat.copy_(t["flat"])
    opt.load({k[len("optim.") :]: v for k, v in t.items() if k.startswith("optim.")})
    losses.copy_(t["losses"])
    if monitor is not None:
        monitor.values.copy_(readings)
    return json.loads(meta["step"])
