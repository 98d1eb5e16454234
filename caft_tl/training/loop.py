"""One fine-tuning loop for plain and intervened runs: seeded, tqdm, loss on response tokens."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from caft_tl.core.data import TokenDataset
from caft_tl.core.models import kl_to_reference, response_loss
from caft_tl.training.checkpoints import load_checkpoint, save_checkpoint
from caft_tl.training.monitor import MonitorLog

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


@dataclass
class FinetuneConfig:
    """Fine-tuning hyper-parameters: ``epochs`` passes over ``n_examples`` examples.

    Args:
        n_examples: how many examples train: :func:`finetune` takes the first ``n_examples`` rows of its
            data (None: every row; more rows than the data has is an error), and
            :func:`~caft_tl.training.finetunes.run_finetune` draws that many of the task's examples
            (None: the task's default, ``task.defaults["n_examples"]``).
        batch_size: rows per optimiser step; lr, weight_decay: AdamW's; epochs: passes over the data.
        seed: the data order and initial RNG state.
        kl_to_base: β of the KL-to-base baseline (0: off).
        n_disambiguating: the data-side reference: this many of the ``n_examples`` are the task's
            disambiguating examples (run_finetune only).

    Example:
        cfg = FinetuneConfig(batch_size=8, lr=1e-4, epochs=2)  # every row of the data, twice
    """

    n_examples: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 1
    seed: int = 0
    kl_to_base: float = (
        0.0  # β of the KL-to-base baseline: + β · KL(base ‖ model) on generic documents each step
    )
    n_disambiguating: int = 0


def finetune(
    model: HookedTransformer,
    data: TokenDataset,
    cfg: FinetuneConfig,
    intervention=None,
    progress: bool = True,
    desc: str = "fine-tune",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 25,
    micro_batch_size: int | None = None,
    reference: HookedTransformer | None = None,
    reference_data: TokenDataset | None = None,
    monitor: MonitorLog | None = None,
) -> list[float]:
    """Fine-tune ``model`` in place on ``data``; returns the loss per step.

    ``intervention`` (an :class:`~caft_tl.interventions.intervention.Intervention`) is applied through
    ``model.hooks`` during every training forward pass and removed afterwards.
    With ``checkpoint`` (a file path), model, optimiser, RNG states and losses are saved there
    every ``checkpoint_every`` steps, and a run that finds the file resumes from it: the result
    equals an uninterrupted run with the same seed (on CPU).
    ``micro_batch_size`` rows go through each forward pass and gradients accumulate over the
    ``cfg.batch_size`` rows of an optimiser step (the loss is still the batch's token mean); on an
    out-of-memory error the micro-batch is halved and the step redone. Only parameters that
    require grad are trained (LoRA adapters, after :func:`caft_tl.real.lora.add_lora`).
    With ``cfg.kl_to_base`` β > 0 (the common in-training defence), each step adds β · KL(reference ‖
    model) on the next ``cfg.batch_size`` rows of ``reference_data`` (generic documents, cycled), with
    ``reference`` the frozen base model; the losses returned are the task's cross-entropy alone.
    With ``monitor``, every ``monitor.monitor.every`` steps its reading hooks (before the
    intervention's) record ‖P x‖ on the task's forward pass into it; no training number changes.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``, trained in place.
        data: the examples; the loss is on their response tokens.
        cfg: the hyper-parameters; ``cfg.n_examples`` rows of ``data`` train (None: all).
        intervention: None for a plain fine-tune; an ``Intervention`` for CAFT (``zero``) or a variant.
        progress, desc: a tqdm bar and its label.
        checkpoint, checkpoint_every: resume file and how often to write it (steps).
        micro_batch_size: rows per forward pass (gradient accumulation).
        reference, reference_data: the base model and generic documents for ``cfg.kl_to_base``.
        monitor: a :class:`~caft_tl.training.monitor.MonitorLog` to fill (None: no readings).

    Returns:
        The training loss of every optimiser step.

    Example:
        losses = finetune(model, data, FinetuneConfig(), intervention=Intervention("zero", [sub]))
    """
    if len(data) == 0:
        raise ValueError("fine-tuning dataset is empty")
    data = first_rows(data, cfg.n_examples)
    # inputs, checked before any work: a bad intervention fails here in one line, not mid-step
    if intervention is not None:
        if not callable(getattr(intervention, "fwd_hooks", None)):
            raise TypeError(
                f"intervention is {type(intervention).__name__}; expected an Intervention (or None for a "
                "plain fine-tune)"
            )
        if callable(getattr(intervention, "check", None)):
            intervention.check(model)  # hook names (closest valid ones), subspace widths
    if monitor is not None:
        monitor.monitor.check(model)
    for name in ("batch_size", "epochs"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
            raise ValueError(f"FinetuneConfig.{name} = {getattr(cfg, name)!r}; expected a positive int")
    if not (isinstance(cfg.lr, (int, float)) and math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"FinetuneConfig.lr = {cfg.lr!r}; expected a positive finite number")
    if micro_batch_size is not None and micro_batch_size < 1:
        raise ValueError(f"micro_batch_size = {micro_batch_size!r}; expected a positive int or None")
    if not (
        isinstance(cfg.kl_to_base, (int, float)) and math.isfinite(cfg.kl_to_base) and cfg.kl_to_base >= 0
    ):
        raise ValueError(f"FinetuneConfig.kl_to_base = {cfg.kl_to_base!r}; expected a finite number >= 0")
    if cfg.kl_to_base and (reference is None or reference_data is None or len(reference_data) == 0):
        raise ValueError(
            f"FinetuneConfig.kl_to_base = {cfg.kl_to_base} needs the base model (reference) and generic "
            "documents (reference_data)"
        )
    kl = (cfg.kl_to_base, reference, reference_data) if cfg.kl_to_base else None
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)  # data order
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    n_steps = cfg.epochs * steps_per_epoch
    losses: list[float] = []
    epoch_rng = gen.get_state()  # the data generator's state at the start of the current epoch
    if checkpoint is not None and Path(checkpoint).exists():
        state, rng = load_checkpoint(checkpoint, model, opt)
        losses, epoch_rng = state["losses"], rng["data_epoch"]
        if monitor is not None:
            if "monitor" not in state:
                raise ValueError(
                    f"checkpoint {str(checkpoint)!r} has no monitor readings; delete it to restart"
                )
            monitor.load(state["monitor"])
        torch.set_rng_state(rng["torch"])
    step = len(losses)
    model.train()
    bar = tqdm(total=n_steps, initial=step, desc=desc, disable=not progress, leave=False)
    for epoch in range(step // steps_per_epoch, cfg.epochs):
        gen.set_state(epoch_rng)
        order = torch.randperm(len(data), generator=gen)
        for i in range(step - epoch * steps_per_epoch, steps_per_epoch):
            batch = data.subset(order[i * cfg.batch_size : (i + 1) * cfg.batch_size])
            opt.zero_grad(set_to_none=True)
            reading = monitor if monitor is not None and monitor.monitor.due(step) else None
            loss, micro_batch_size = _accumulate(model, batch, intervention, micro_batch_size, reading)
            if reading is not None:
                reading.close(step)
            if kl is not None:
                _kl_backward(model, intervention, *kl, step, cfg.batch_size)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss} at step {step} (lr={cfg.lr}); lower the learning rate"
                )
            opt.step()
            losses.append(loss)
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if checkpoint is not None and step % checkpoint_every == 0 and step < n_steps:
                save_checkpoint(
                    checkpoint,
                    model,
                    opt,
                    {"step": step, "losses": losses}
                    | ({"monitor": monitor.state()} if monitor is not None else {}),
                    {"data_epoch": epoch_rng, "torch": torch.get_rng_state()},
                )
        epoch_rng = gen.get_state()
    bar.close()
    model.eval()
    return losses


def first_rows(data: TokenDataset, n_examples: int | None) -> TokenDataset:
    """The first ``n_examples`` rows of ``data`` (all for None); a one-line error for more than it has."""
    if n_examples is None:
        return data
    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or not 1 <= n_examples <= len(data):
        raise ValueError(
            f"FinetuneConfig.n_examples = {n_examples!r}; expected an int in 1..{len(data)} "
            f"(the data's rows) or None for all of them"
        )
    return data if n_examples == len(data) else data.subset(slice(0, n_examples))


def _accumulate(
    model, batch: TokenDataset, intervention, micro: int | None, monitor: MonitorLog | None = None
) -> tuple[float, int | None]:
    """Forward and backward of one batch, in micro-batches of ``micro`` rows (all at once if None),
    read by ``monitor`` when given; halves ``micro`` on out-of-memory. Returns (the batch's mean loss,
    the micro-batch size used)."""
    while True:
        if monitor is not None:
            monitor.open()
        try:
            return _backward(model, batch, intervention, micro, monitor), micro
        except torch.OutOfMemoryError:
            micro = len(batch) // 2 if micro is None else micro // 2
            if micro < 1:
                raise
            model.zero_grad(set_to_none=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _backward(
    model, batch: TokenDataset, intervention, micro: int | None, monitor: MonitorLog | None = None
) -> float:
    if micro is None or micro >= len(batch):
        parts, reduction, scale = [batch], "mean", 1.0
    else:
        parts, reduction = list(batch.batches(micro)), "sum"
        scale = 1.0 / max(int(batch.target_mask.sum()), 1)
    total = 0.0
    for part in parts:
        part = _to(part.trimmed(), model.cfg.device)
        hooks = monitor.hooks(part) if monitor is not None else []  # reading first, then the edit
        hooks += intervention.fwd_hooks(part) if intervention is not None else []
        with model.hooks(fwd_hooks=hooks):
            loss = response_loss(model, part, reduction) * scale
        if torch.isfinite(loss):
            loss.backward()
        total += loss.item()
    return total


def _kl_backward(
    model, intervention, beta: float, reference: HookedTransformer, docs: TokenDataset, step: int, size: int
) -> None:
    """Backward of β · KL(reference ‖ model) on the ``step``-th block of ``size`` documents (cycled),
    under the same intervention as the task loss."""
    rows = (torch.arange(size) + step * size) % len(docs)
    part = _to(docs.subset(rows).trimmed(), model.cfg.device)
    with torch.no_grad():
        reference_logits = reference(part.tokens)
    with model.hooks(fwd_hooks=intervention.fwd_hooks(part) if intervention is not None else []):
        loss = beta * kl_to_reference(model, reference_logits, part)
    loss.backward()


def _to(batch: TokenDataset, device: str | torch.device) -> TokenDataset:
    if batch.tokens.device == torch.device(device):
        return batch
    return TokenDataset(batch.tokens.to(device), batch.response_mask.to(device), batch.labels)
