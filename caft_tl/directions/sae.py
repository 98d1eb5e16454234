"""SAELens SAEs as a direction source: train them on the organism's activations at any TL hook
(SAELens' own ``SAETrainer``), load any SAE saved in SAELens' format, measure reconstruction,
rank latents for a fine-tune, and turn chosen latents into a :class:`~caft_tl.directions.pca.Subspace`.

An SAE on disk is a SAELens folder: ``cfg.json`` + ``sae_weights.safetensors``; the TL hook it
reads is ``cfg.json``'s ``metadata.hook_name``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import pandas as pd
import torch
from sae_lens import SAE, SAETrainer, StandardTrainingSAEConfig, TopKTrainingSAEConfig, TrainingSAE
from sae_lens.config import SAETrainerConfig
from safetensors import SafetensorError
from transformer_lens import HookedTransformer

from caft_tl.core import files, models
from caft_tl.core.activations import _cache, activations
from caft_tl.core.data import TokenDataset
from caft_tl.core.models import response_loss
from caft_tl.core.run_dir import RunDir
from caft_tl.core.subspace import Subspace, orthonormalize

SAE_FILES = ("cfg.json", "sae_weights.safetensors")


@dataclass
class SAETrainConfig:
    """How an SAE is trained on the organism. ``architecture`` names an entry of ``ARCHITECTURES``."""

    architecture: str = "topk"
    expansion: int = 8  # d_sae = expansion × the hook's width
    k: int = 8  # active latents per token (topk)
    l1_coefficient: float = 2.0  # sparsity penalty (standard)
    steps: int = 2000
    batch_size: int = 256  # activation vectors per step
    lr: float = 1e-3
    n_docs: int = 3000  # pre-training documents whose activations are the training set
    seed: int = 0


#: architecture name -> f(cfg, d_in) -> SAELens training config
ARCHITECTURES: dict[str, Callable[[SAETrainConfig, int], object]] = {}


def register_architecture(name: str):
    def deco(fn):
        ARCHITECTURES[name] = fn
        return fn

    return deco


@register_architecture("standard")
def _standard(cfg: SAETrainConfig, d_in: int) -> StandardTrainingSAEConfig:
    """ReLU latents with an L1 penalty (weighted by decoder norms)."""
    return StandardTrainingSAEConfig(
        d_in=d_in,
        d_sae=cfg.expansion * d_in,
        l1_coefficient=cfg.l1_coefficient,
        normalize_activations="expected_average_only_in",
    )


@register_architecture("topk")
def _topk(cfg: SAETrainConfig, d_in: int) -> TopKTrainingSAEConfig:
    """Exactly ``k`` active latents per token."""
    return TopKTrainingSAEConfig(
        d_in=d_in, d_sae=cfg.expansion * d_in, k=cfg.k, normalize_activations="expected_average_only_in"
    )


def hook_width(model: HookedTransformer, hook: str) -> int:
    """Width of the activation at a TL hook (``hook_z`` flattened over heads, as SAELens does)."""
    models.check_hook_names(model, hook)
    act = _cache(model, torch.zeros(1, 1, dtype=torch.long), [hook])[hook]  # [1, 1, ...]
    return int(torch.tensor(act.shape[2:]).prod())


def training_activations(model: HookedTransformer, task, hook: str, n_docs: int, seed: int) -> torch.Tensor:
    """[n, d_in] activations of ``model`` at ``hook`` on ``n_docs`` pre-training documents, every
    position but ``<bos>`` (whose residual stream is a constant outlier, as in SAELens' default).

    Why the *base* model on *pre-training* documents: the SAE should be a dictionary of what the
    model represented before the fine-tune — the personas and prompts of its world — so that
    ranking latents by the fine-tune's change reads that change in the base model's own concepts;
    the pre-training distribution is the model's generic data (no OOD evaluation data is used),
    as the paper's SAEs are trained on generic text, and the fine-tuning set alone (12 code prompts,
    one persona) would give a dictionary with no persona concept to find.
    """
    docs = task.sample_documents(n_docs, torch.Generator().manual_seed(seed))
    acts = activations(model, docs, hook)[:, 1:]  # [n_docs, pos-1, ...]
    return acts.reshape(-1, acts[0, 0].numel()).float()


def _batches(x: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """An endless, seeded, shuffled stream of [batch_size, d_in] rows (SAELens' data provider)."""
    gen = torch.Generator().manual_seed(seed)
    for _ in count():
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield x[order[i : i + batch_size]]


def train_sae(
    x: torch.Tensor, cfg: SAETrainConfig, hook: str, model_name: str = "", progress: bool = True
) -> SAE:
    """Train an SAE with SAELens' ``SAETrainer`` on activation rows ``x`` [n, d_in]; returns the
    inference SAE (decoder rows unit norm, activation scaling folded in), ``metadata.hook_name`` set."""
    if cfg.architecture not in ARCHITECTURES:
        raise ValueError(f"unknown SAE architecture {cfg.architecture!r}; valid: {', '.join(ARCHITECTURES)}")
    if len(x) < cfg.batch_size:
        raise ValueError(f"{len(x)} activation rows < batch_size {cfg.batch_size}; use more documents")
    torch.manual_seed(cfg.seed)
    sae_cfg = ARCHITECTURES[cfg.architecture](cfg, x.shape[1])
    sae_cfg.metadata.hook_name = hook
    sae_cfg.metadata.model_name = model_name
    sae = TrainingSAE.from_dict(sae_cfg.to_dict())
    trainer_cfg = SAETrainerConfig(
        total_training_samples=cfg.steps * cfg.batch_size,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_warm_up_steps=cfg.steps // 20,
        lr_decay_steps=cfg.steps // 5,
        lr_end=cfg.lr / 10,
        dead_feature_window=max(cfg.steps // 4, 1),
        feature_sampling_window=cfg.steps + 1,
        n_batches_for_norm_estimate=20,
    )
    with _quiet(not progress):
        sae = SAETrainer(trainer_cfg, sae, _batches(x, cfg.batch_size, cfg.seed)).fit()
    sae.fold_W_dec_norm()
    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)
        return SAE.load_from_disk(tmp)


@contextlib.contextmanager
def _quiet(on: bool):
    """Silence SAELens' own tqdm bars (the trainer has no switch for them)."""
    if not on:
        yield
        return
    from functools import partial
    from unittest import mock

    from sae_lens.training import activation_scaler, sae_trainer

    with (
        mock.patch.object(sae_trainer, "tqdm", partial(sae_trainer.tqdm, disable=True)),
        mock.patch.object(activation_scaler, "tqdm", partial(activation_scaler.tqdm, disable=True)),
    ):
        yield


def save_sae(sae: SAE, folder: str | os.PathLike) -> Path:
    """Write a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``) whole or not at all."""
    folder = Path(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    except OSError as e:
        raise (files.write_error(folder, e) or e) from None
    try:
        written = [Path(f) for f in sae.save_model(tmp)]
        for f in written:
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if files.run_root(folder.parent) is not None:  # in a run directory: checksums, as for every artefact
            files.record_checksums(tmp, [f.name for f in written if f.parent == tmp])
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if (err := files.write_error(folder, e)) is not None and err is not e:
            raise err from None
        raise
    return folder


def load_sae(
    folder: str | os.PathLike, model: HookedTransformer | None = None, hook: str | None = None
) -> SAE:
    """Load an SAE saved in SAELens' format from a local folder; with ``model`` (and ``hook``),
    check that its hook exists in the model (and is ``hook``) and that its ``d_in`` matches."""
    folder = Path(folder)
    missing = [f for f in SAE_FILES if not (folder / f).exists()]
    if missing:
        raise FileNotFoundError(f"{str(folder)!r} is not a SAELens SAE folder: missing {', '.join(missing)}")
    for f in SAE_FILES:
        files.verify(folder / f)
    try:
        sae = SAE.load_from_disk(folder)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise files.CorruptFileError(f"cannot load SAE {str(folder)!r}: {reason}") from None
    sae_hook = sae.cfg.metadata.hook_name
    if hook is not None and sae_hook != hook:
        raise ValueError(f"SAE {str(folder)!r} reads hook {sae_hook!r}, not {hook!r}")
    if model is not None:
        if not sae_hook:
            raise ValueError(
                f"SAE {str(folder)!r} names no hook (cfg.json metadata.hook_name); "
                f"valid: {', '.join(list(model.hook_dict)[:3])}, ..."
            )
        width = hook_width(model, sae_hook)
        if sae.cfg.d_in != width:
            raise ValueError(
                f"SAE {str(folder)!r} has d_in {sae.cfg.d_in}, "
                f"but {sae_hook!r} of this model has width {width}"
            )
    sae.eval()
    return sae


def find_saes(root: str | os.PathLike) -> list[Path]:
    """SAELens folders at or under ``root`` (each with ``cfg.json`` + ``sae_weights.safetensors``)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"SAE folder {str(root)!r} does not exist")
    found = sorted(p.parent for p in root.rglob("cfg.json") if (p.parent / SAE_FILES[1]).exists())
    if not found:
        raise FileNotFoundError(
            f"no SAELens SAE (cfg.json + sae_weights.safetensors) at or under {str(root)!r}"
        )
    return found


def train_or_load(
    model: HookedTransformer,
    task,
    hook: str,
    cfg: SAETrainConfig,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[SAE, Path]:
    """The SAE for (base model, task, hook, cfg) from ``cache_dir/saes/<hash>``, trained and cached
    there (atomically) if absent."""
    spec = {
        "cfg": cfg,
        "hook": hook,
        "task": task.name,
        "task_cfg": task.cfg,
        "base": models.weights_hash(model),
    }
    name = f"{hook}-{cfg.architecture}-{files.config_hash(spec)}"
    cache = files.cache_folder("saes", cache_dir)
    folder = cache / name
    if all((folder / f).exists() for f in SAE_FILES):
        return load_sae(folder, model, hook), folder
    x = training_activations(model, task, hook, cfg.n_docs, cfg.seed)
    sae = train_sae(x, cfg, hook, model_name=f"caft-tl {task.name} {spec['base']}", progress=progress)
    with files.writing_to_cache(cache):
        return sae, save_sae(sae, folder)


# ---------------------------------------------------------------------- reconstruction quality


def encode(sae: SAE, acts: torch.Tensor) -> torch.Tensor:
    """[..., d_in] activations → [..., d_sae] latent activations."""
    return sae.encode(acts.to(sae.W_enc.device, sae.W_enc.dtype))


@torch.no_grad()
def reconstruction_metrics(
    model: HookedTransformer, task, sae: SAE, n_docs: int = 1000, seed: int = 12_345
) -> dict[str, float]:
    """On held-out pre-training documents (every position but ``<bos>``): explained variance,
    L0 (mean active latents per token), fraction of dead latents (never active), and the model's
    loss on answer tokens clean, with the SAE's reconstruction spliced in at its hook, and with
    the hook zero-ablated; ``loss_recovered`` = (zero − spliced) / (zero − clean)."""
    hook = sae.cfg.metadata.hook_name
    docs = task.sample_documents(n_docs, torch.Generator().manual_seed(seed))
    x = activations(model, docs, hook)[:, 1:]  # [n, pos-1, d_in]
    f = encode(sae, x)  # [n, pos-1, d_sae]
    x_hat = sae.decode(f)
    resid = (x - x_hat).pow(2).sum()
    total = (x - x.mean((0, 1))).pow(2).sum()

    def splice(replace):
        def fn(h, hook):
            h = h.clone()
            h[:, 1:] = replace(h[:, 1:])
            return h

        with model.hooks(fwd_hooks=[(hook, fn)]):
            return response_loss(model, docs).item()

    clean = response_loss(model, docs).item()
    spliced = splice(lambda h: sae.decode(encode(sae, h)).to(h.device, h.dtype))
    zero = splice(torch.zeros_like)
    return {
        "explained_variance": 1 - (resid / total).item(),
        "l0": (f > 0).float().sum(-1).mean().item(),
        "dead_fraction": ((f > 0).flatten(0, 1).sum(0) == 0).float().mean().item(),
        "loss_clean": clean,
        "loss_sae": spliced,
        "loss_zero": zero,
        "loss_recovered": (zero - spliced) / max(zero - clean, 1e-12),
    }


# ---------------------------------------------------------------------- ranking latents


def latent_scores(
    base: HookedTransformer,
    finetuned: HookedTransformer,
    data: TokenDataset,
    sae: SAE,
    mean_diff: torch.Tensor | None = None,
    positions: str = "response",
    batch_size: int = 256,
) -> pd.DataFrame:
    """Three ways to rank an SAE's latents for a fine-tune, from the fine-tuning data alone
    (masked to ``positions``), one row per latent:

    - ``mean_diff``: mean of f(h_ft) − f(h_base), the change of each latent's activation;
    - ``attribution``: mean of −f_j · ∂L/∂f_j on the *base* model (L the fine-tuning loss, whose
      gradient the fine-tune follows; on the fine-tuned model it has vanished): the first-order
      rise of that loss if latent j were zero-ablated — the latents the fine-tune can lean on;
    - ``diff_encoding``: the SAE's encoder applied to the mean diff, ``W_encᵀ E[h_ft − h_base]``
      (the linear part only: the encoder bias belongs to activations, not differences).
      ``mean_diff`` [d_in] defaults to the one streamed here.
    """
    hook = sae.cfg.metadata.hook_name
    models.check_hook_names(base, hook)
    d_sae = sae.cfg.d_sae
    delta_f = torch.zeros(d_sae, dtype=torch.float64)
    attr = torch.zeros(d_sae, dtype=torch.float64)
    delta_h = torch.zeros(sae.cfg.d_in, dtype=torch.float64)
    n = 0
    for batch in data.batches(batch_size):
        mask = batch.position_mask(positions).to(base.cfg.device)  # [b, pos]
        with torch.no_grad():
            h_ft = _cache(finetuned, batch.tokens, [hook])[hook]  # [b, pos, d_in]
        store = {}

        def keep(h, hook, store=store):
            store["h"] = h
            return h

        with base.hooks(fwd_hooks=[(hook, keep)]):
            loss = response_loss(base, batch)
        (grad,) = torch.autograd.grad(
            loss * int(batch.target_mask.sum()), store["h"]
        )  # summed over positions
        h_base = store["h"].detach()
        with torch.no_grad():
            f_ft, f_base = encode(sae, h_ft[mask]), encode(sae, h_base[mask])  # [n_sel, d_sae]
            grad_f = (
                grad[mask].to(sae.W_dec.device, sae.W_dec.dtype) @ sae.W_dec.T
            )  # ∂L/∂f_j = W_dec[j] · ∂L/∂h
            delta_f += (f_ft - f_base).sum(0).double().cpu()
            attr -= (f_base * grad_f).sum(0).double().cpu()
            delta_h += (h_ft[mask] - h_base[mask]).sum(0).double().cpu()
        n += int(mask.sum())
    if n == 0:
        raise ValueError(f"positions={positions!r} selects no position of the data")
    mean_diff = delta_h.float() / n if mean_diff is None else mean_diff.float()
    with torch.no_grad():
        enc = (mean_diff.to(sae.W_enc.device) @ sae.W_enc).cpu()  # [d_sae]
    return pd.DataFrame(
        {
            "hook": hook,
            "latent": range(d_sae),
            "mean_diff": (delta_f / n).float().numpy(),
            "attribution": (attr / n).float().numpy(),
            "diff_encoding": enc.numpy(),
        }
    )


RANKINGS = ("mean_diff", "attribution", "diff_encoding")


def rank_latents(scores: pd.DataFrame, ranking: str, n: int) -> list[int]:
    """The ``n`` latents with the largest |score| under ``ranking`` (one of ``RANKINGS``)."""
    if ranking not in RANKINGS:
        raise ValueError(f"unknown latent ranking {ranking!r}; valid: {', '.join(RANKINGS)}")
    order = scores[ranking].abs().sort_values(ascending=False, kind="stable").index
    return scores.loc[order[:n], "latent"].astype(int).tolist()


def decoder_directions(sae: SAE, latents: list[int]) -> torch.Tensor:
    """[d_in, m] unit decoder directions of the given latents."""
    w = sae.W_dec.detach()[latents].float()  # [m, d_in]
    return (w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)).T


def latent_concept_scores(sae: SAE, latents: list[int], concepts: dict[str, Subspace]) -> pd.DataFrame:
    """|cos| of each latent's decoder direction with each ground-truth concept direction at the
    SAE's hook; columns as :func:`caft_tl.directions.interpret.concept_scores` (``index`` is the latent id),
    so :func:`caft_tl.directions.oracle.is_concept` scores them as it scores the PCs."""
    hook = sae.cfg.metadata.hook_name
    dirs = decoder_directions(sae, latents)  # [d_in, m]
    rows = []
    for j, latent in enumerate(latents):
        row = {"hook": hook, "direction": f"L{latent}", "index": latent}
        for name, c in concepts.items():
            if c.hook_name != hook:
                raise ValueError(f"concept {name!r} is at {c.hook_name!r}, not {hook!r}")
            row[name] = (dirs[:, j] @ c.basis[:, 0]).abs().item()
        rows.append(row)
    return pd.DataFrame(rows)


def latent_subspace(sae: SAE, latents: list[int], name: str = "sae") -> Subspace:
    """The span of the latents' decoder directions, orthonormalised, at the SAE's hook."""
    if not latents:
        raise ValueError(
            f"no latents chosen at {sae.cfg.metadata.hook_name!r}; "
            f"choose at least one of 0..{sae.cfg.d_sae - 1}"
        )
    bad = [i for i in latents if not 0 <= i < sae.cfg.d_sae]
    if bad:
        raise ValueError(f"latents {bad} out of range 0..{sae.cfg.d_sae - 1}")
    q = orthonormalize(decoder_directions(sae, latents))
    labels = (
        [f"L{i}" for i in latents]
        if q.shape[1] == len(latents)
        else [f"{name}{j}" for j in range(q.shape[1])]
    )
    return Subspace(
        sae.cfg.metadata.hook_name,
        q,
        labels,
        {
            "method": name,
            "latents": list(latents),
            "architecture": sae.cfg.architecture(),
            "d_sae": sae.cfg.d_sae,
        },
    )


@torch.no_grad()
def latent_activations(
    model: HookedTransformer, data: TokenDataset, sae: SAE, latents: list[int], fwd_hooks=()
) -> torch.Tensor:
    """[n, pos, m] activations of the given latents (under optional intervention hooks)."""
    return encode(sae, activations(model, data, sae.cfg.metadata.hook_name, fwd_hooks=fwd_hooks))[
        ..., latents
    ]


def top_examples(
    model: HookedTransformer, data: TokenDataset, sae: SAE, latents: list[int], vocab, n: int = 5
) -> pd.DataFrame:
    """Top-``n`` distinct contexts activating each latent (columns as
    :func:`caft_tl.directions.interpret.top_examples`)."""
    from caft_tl.directions.interpret import top_contexts

    return top_contexts(
        latent_activations(model, data, sae, latents), data, [f"L{i}" for i in latents], vocab, n, signs=(+1,)
    )


# ---------------------------------------------------------------------- SAEs of a run directory


def save_run_saes(
    run_dir: str | os.PathLike, saes: dict[tuple[str, str], SAE], model: HookedTransformer, task
) -> pd.DataFrame:
    """Copy ``{(architecture, hook): SAE}`` into ``run_dir/saes/<architecture>/<hook>/`` (SAELens
    folders), measure each (:func:`reconstruction_metrics`) and write the manifest; returns the
    metrics, one row per SAE."""
    rows = []
    for (arch, hook), sae in saes.items():
        folder = save_sae(sae, Path(run_dir) / "saes" / arch / hook)
        rows.append(
            {
                "architecture": arch,
                "hook": hook,
                "d_sae": sae.cfg.d_sae,
                "folder": str(folder.relative_to(run_dir)),
                **reconstruction_metrics(model, task, sae),
            }
        )
    files.write_json(RunDir(run_dir).path("saes"), rows)
    return pd.DataFrame(rows)


def load_folder(root: str | os.PathLike, model: HookedTransformer) -> dict[tuple[str, str], SAE]:
    """Every SAELens SAE at or under ``root``, checked against ``model``, as
    ``{(architecture, hook): SAE}``."""
    out = {}
    for folder in find_saes(root):
        sae = load_sae(folder, model)
        key = (sae.cfg.architecture(), sae.cfg.metadata.hook_name)
        if key in out:
            raise ValueError(
                f"two SAEs for architecture {key[0]!r} at {key[1]!r} under {str(root)!r}; keep one"
            )
        out[key] = sae
    return out


def load_run_saes(run_dir: str | os.PathLike, architecture: str, model: HookedTransformer) -> dict[str, SAE]:
    """``{hook: SAE}`` of one architecture from the run's manifest (written by chapter 02)."""
    manifest = RunDir(run_dir).require("saes")
    rows = files.read_json(manifest)
    chosen = [r for r in rows if r["architecture"] == architecture]
    if not chosen:
        raise ValueError(
            f"no {architecture!r} SAE in {str(manifest)!r}; "
            f"valid: {', '.join(sorted({r['architecture'] for r in rows}))}"
        )
    return {r["hook"]: load_sae(Path(run_dir) / r["folder"], model, r["hook"]) for r in chosen}
