"""Streaming activation collection and base-vs-fine-tuned diffs, masked to chosen positions.

Nothing here keeps a dataset's activations in memory: each batch is folded into running sums
(count, sum, second moment) from which means and PCA are derived.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from caft_tl.core.activations import _cache
from caft_tl.core.data import TokenDataset
from caft_tl.core.models import check_hook_names


@dataclass
class MomentStats:
    """Running first and second moments of vectors at one hook (float64 accumulators).

    Args:
        count: the number of vectors folded in.
        total: their sum [d_model].
        outer: the sum of their outer products [d_model, d_model].

    Example:
        stats = MomentStats.empty(768)
        stats.add(x)  # x: [n, d_model]
        stats.mean, stats.second_moment()  # [d_model], [d_model, d_model]
    """

    count: int
    total: torch.Tensor  # [d_model]
    outer: torch.Tensor  # [d_model, d_model]

    @classmethod
    def empty(cls, d_model: int) -> MomentStats:
        return cls(
            0, torch.zeros(d_model, dtype=torch.float64), torch.zeros(d_model, d_model, dtype=torch.float64)
        )

    def add(self, x: torch.Tensor) -> None:
        """x: [n, d_model] rows to fold in."""
        x = x.detach().to("cpu", torch.float64)
        self.count += x.shape[0]
        self.total += x.sum(0)
        self.outer += x.T @ x

    @property
    def mean(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("no positions were selected: the statistics are empty")
        return (self.total / self.count).float()

    def second_moment(self, center: bool = False) -> torch.Tensor:
        """[d_model, d_model] E[x xᵀ] (or the covariance when ``center``)."""
        m = self.outer / max(self.count, 1)
        if center:
            mu = self.total / max(self.count, 1)
            m = m - torch.outer(mu, mu)
        return m

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.count": torch.tensor(self.count),
            f"{prefix}.total": self.total,
            f"{prefix}.outer": self.outer,
        }

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], prefix: str) -> MomentStats:
        return cls(int(t[f"{prefix}.count"]), t[f"{prefix}.total"], t[f"{prefix}.outer"])


@torch.inference_mode()
def collect_diff_stats(
    base: HookedTransformer,
    finetuned: HookedTransformer,
    data: TokenDataset,
    hooks: list[str],
    positions: str = "response",
    batch_size: int = 256,
    progress: bool = True,
) -> dict[str, dict[str, MomentStats]]:
    """Stream ``ft − base`` at each hook over ``data``, masked to ``positions``.

    Returns ``{hook: {"diff": stats of ft − base, "base": stats of base}}``; the base moments give
    the reference mean μ that the mean-ablation modes use.

    Args:
        base: the model before fine-tuning.
        finetuned: the fine-tuned model (same architecture and hooks).
        data: the tokens to run both on, usually the fine-tuning data.
        hooks: TL hook names, e.g. ``["blocks.6.hook_resid_post"]``.
        positions: ``all``, ``prompt`` or ``response`` (the positions that write the response).
        batch_size: rows per forward pass; memory stays flat in the dataset's size.
        progress: show a tqdm bar.

    Returns:
        ``{hook: {"diff": MomentStats, "base": MomentStats}}``.

    Example:
        stats = collect_diff_stats(base, model, data, ["blocks.6.hook_resid_post"])
        sub, explained = pca(stats["blocks.6.hook_resid_post"]["diff"], 4, "blocks.6.hook_resid_post")
    """
    check_hook_names(base, hooks)
    d_model = base.cfg.d_model
    out = {h: {"diff": MomentStats.empty(d_model), "base": MomentStats.empty(d_model)} for h in hooks}
    n_batches = -(-len(data) // batch_size)
    for batch in tqdm(
        data.batches(batch_size), total=n_batches, desc="diffing", disable=not progress, leave=False
    ):
        mask = batch.position_mask(positions).to(base.cfg.device)  # [b, pos]
        a_base = _cache(base, batch.tokens, hooks)
        a_ft = _cache(finetuned, batch.tokens, hooks)
        for h in hooks:
            out[h]["diff"].add((a_ft[h] - a_base[h])[mask])  # [n_sel, d_model]
            out[h]["base"].add(a_base[h][mask])
    return out


def save_diff_stats(path, stats: dict[str, dict[str, MomentStats]], meta: dict) -> None:
    """``path.safetensors`` (moments) + ``path.json`` (hooks and settings), atomically."""
    from caft_tl.core import files

    tensors = {}
    for hook, d in stats.items():
        for kind, s in d.items():
            tensors.update(s.to_tensors(f"{hook}.{kind}"))
    files.write_tensors(f"{path}.safetensors", tensors)
    files.write_json(f"{path}.json", meta)


def load_diff_stats(path) -> tuple[dict[str, dict[str, MomentStats]], dict]:
    from caft_tl.core import files

    meta = files.read_json(f"{path}.json")
    t = files.read_tensors(f"{path}.safetensors")
    stats = {h: {k: MomentStats.from_tensors(t, f"{h}.{k}") for k in ("diff", "base")} for h in meta["hooks"]}
    return stats, meta


@torch.inference_mode()
def mean_activations(
    model: HookedTransformer,
    data: TokenDataset,
    hooks: list[str],
    positions: str = "all",
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Streamed mean activation [d_model] at each hook over the selected positions (μ).

    Args:
        model: the model (usually the base).
        data: the tokens to average over.
        hooks: TL hook names.
        positions: ``all``, ``prompt`` or ``response``.
        batch_size: rows per forward pass.

    Returns:
        ``{hook: μ [d_model]}``.

    Example:
        mu = mean_activations(base, data, [hook])[hook]
        iv = Intervention("mean", [sub.with_mean(mu)])
    """
    check_hook_names(model, hooks)
    total = {h: torch.zeros(model.cfg.d_model, dtype=torch.float64) for h in hooks}
    count = 0
    for batch in data.batches(batch_size):
        mask = batch.position_mask(positions).to(model.cfg.device)
        acts = _cache(model, batch.tokens, hooks)
        for h in hooks:
            total[h] += acts[h][mask].to("cpu", torch.float64).sum(0)
        count += int(mask.sum())
    if count == 0:
        raise ValueError(f"positions={positions!r} selects no position of the data")
    return {h: (t / count).float() for h, t in total.items()}
