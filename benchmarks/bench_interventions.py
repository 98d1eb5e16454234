"""Intervention overhead: training-step time with each mode at 1, 3 and all layers ÷ plain step.

One step = ``zero_grad`` + forward through ``model.hooks(fwd_hooks=...)`` + response loss +
``backward`` + ``AdamW.step``, exactly the body of :func:`caft_tl.training.loop.finetune`. Plain and
intervened steps are interleaved in pairs (order alternating, settings shuffled each round) and
the reported ratio is the median over rounds of (intervened step / adjacent plain step), which
cancels slow drifts of a shared CPU. A ``plain`` vs ``plain`` pair is measured the same way as a
control: its distance from 1 is the noise floor of the table.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from benchmarks.common import Row, median, row, spread, timed
from caft_tl.core import models
from caft_tl.core.data import TokenDataset
from caft_tl.core.models import response_loss
from caft_tl.core.subspace import random_subspace
from caft_tl.interventions.intervention import Intervention
from caft_tl.interventions.modes import MODES

#: the benchmark model: big enough that a step is tens of ms, small enough for 2 CPU cores
BENCH_MODEL = models.ModelConfig(n_layers=4, d_model=256, n_heads=8, d_head=32, d_mlp=1024, n_ctx=64)
D_VOCAB = 512
SCALES = {"steer_mean": -3.0, "add": 4.0}


@dataclass
class StepSetup:
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    batch: TokenDataset


def make_setup(cfg: models.ModelConfig = BENCH_MODEL, batch: int = 8, seed: int = 0) -> StepSetup:
    """Model, AdamW and one fixed batch (tokens random, the second half of each row a response)."""
    model = models.build_model(cfg, D_VOCAB, seed=seed, device="cpu")
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, D_VOCAB, (batch, cfg.n_ctx), generator=g)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, cfg.n_ctx // 2 :] = True
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    return StepSetup(model, opt, TokenDataset(tokens, mask))


def hook_sets(n_layers: int) -> dict[str, list[str]]:
    """Named lists of hook points: 1, 3 and all layers' resid_post, and every resid hook."""
    post = [f"blocks.{i}.hook_resid_post" for i in range(n_layers)]
    every = [f"blocks.{i}.hook_resid_{w}" for i in range(n_layers) for w in ("pre", "mid", "post")]
    return {
        "1 hook": post[:1],
        "3 hooks": post[:3],
        f"all layers ({n_layers})": post,
        f"all resid ({len(every)})": every,
    }


def make_intervention(mode: str, hooks: list[str], d_model: int, k: int) -> Intervention:
    """A rank-``k`` random subspace per hook (with a random μ for the modes that need one)."""
    subs = []
    for i, h in enumerate(hooks):
        s = random_subspace(d_model, k, h, seed=i)
        if MODES[mode].needs_mean:
            s = s.with_mean(torch.randn(d_model, generator=torch.Generator().manual_seed(100 + i)))
        subs.append(s)
    return Intervention(mode, subs, scale=SCALES.get(mode, 1.0))


def train_step(s: StepSetup, iv: Intervention | None) -> float:
    """One training step as in ``caft_tl.training.loop.finetune``; returns the loss."""
    hooks = iv.fwd_hooks(s.batch) if iv is not None else []
    with s.model.hooks(fwd_hooks=hooks):
        loss = response_loss(s.model, s.batch)
    s.opt.zero_grad(set_to_none=True)
    loss.backward()
    s.opt.step()
    return loss.item()


def measure(rounds: int = 8, k: int = 8, warmup: int = 5, seed: int = 0, progress: bool = True) -> list[Row]:
    """Median paired step-time ratio for every (mode, hook set), plus the plain/plain control."""
    s = make_setup()
    d = s.model.cfg.d_model
    settings: dict[tuple[str, str], Intervention | None] = {("plain", "control"): None}
    for name, hooks in hook_sets(s.model.cfg.n_layers).items():
        for mode in MODES:
            settings[(mode, name)] = make_intervention(mode, hooks, d, k)
    for _ in range(warmup):
        train_step(s, None)
        for iv in settings.values():
            train_step(s, iv)
    rng = random.Random(seed)
    ratios: dict[tuple[str, str], list[float]] = {key: [] for key in settings}
    plain_times: list[float] = []
    keys = list(settings)
    for r in tqdm(range(rounds), desc="intervention overhead", disable=not progress):
        rng.shuffle(keys)
        for j, key in enumerate(keys):
            iv = settings[key]
            if (r + j) % 2:
                t_iv, t_plain = timed(lambda iv=iv: train_step(s, iv)), timed(lambda: train_step(s, None))
            else:
                t_plain, t_iv = timed(lambda: train_step(s, None)), timed(lambda iv=iv: train_step(s, iv))
            ratios[key].append(t_iv / t_plain)
            plain_times.append(t_plain)
    plain_ms = median(plain_times) * 1e3
    rows = []
    for (mode, name), rs in ratios.items():
        n_hooks = 0 if mode == "plain" else len(settings[(mode, name)].subspaces)
        target = "<= 1.03" if n_hooks == 1 else "<= 1.10" if n_hooks >= s.model.cfg.n_layers else ""
        if mode == "plain":
            target = "~ 1.00"
        detail = (
            f"median of {len(rs)} paired steps; IQR/2 {spread(rs):.1%}; plain step {plain_ms:.1f} ms; "
            f"k={k}; model L{s.model.cfg.n_layers} d{d} batch {tuple(s.batch.tokens.shape)}; 1 thread"
        )
        rows.append(row("intervention_overhead", f"{mode} @ {name}", median(rs), target, detail))
    return rows


if __name__ == "__main__":
    torch.set_num_threads(1)
    for r in measure():
        print(r)
