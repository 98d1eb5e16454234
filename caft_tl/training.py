"""One fine-tuning loop for plain and intervened runs: seeded, tqdm, loss on response tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from caft_tl.data import TokenDataset


@dataclass
class FinetuneConfig:
    """Fine-tuning hyper-parameters. One epoch over ``n_examples`` examples."""

    n_examples: int = 4800
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 1
    seed: int = 0


def response_loss(model: HookedTransformer, batch: TokenDataset) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions that predict response tokens."""
    logits = model(batch.tokens)  # [batch, pos, d_vocab]
    mask = batch.target_mask[:, :-1]  # [batch, pos-1]
    targets = batch.tokens[:, 1:]  # [batch, pos-1]
    return F.cross_entropy(logits[:, :-1][mask], targets[mask])


def finetune(
    model: HookedTransformer,
    data: TokenDataset,
    cfg: FinetuneConfig,
    intervention=None,
    progress: bool = True,
    desc: str = "fine-tune",
) -> list[float]:
    """Fine-tune ``model`` in place on ``data``; returns the loss per step.

    ``intervention`` (an :class:`~caft_tl.interventions.Intervention`) is applied through
    ``model.hooks`` during every training forward pass and removed afterwards.
    """
    if len(data) == 0:
        raise ValueError("fine-tuning dataset is empty")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_steps = cfg.epochs * math.ceil(len(data) / cfg.batch_size)
    losses: list[float] = []
    model.train()
    bar = tqdm(total=n_steps, desc=desc, disable=not progress, leave=False)
    for _ in range(cfg.epochs):
        for batch in data.batches(cfg.batch_size, shuffle=True, generator=gen):
            batch = _to(batch, model.cfg.device)
            hooks = intervention.fwd_hooks(batch) if intervention is not None else []
            with model.hooks(fwd_hooks=hooks):
                loss = response_loss(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss.item()} at step {len(losses)} (lr={cfg.lr}); lower the learning rate"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    model.eval()
    return losses


def _to(batch: TokenDataset, device: str | torch.device) -> TokenDataset:
    if batch.tokens.device == torch.device(device):
        return batch
    return TokenDataset(batch.tokens.to(device), batch.response_mask.to(device), batch.labels)
