"""The real-model experiment on one real task (a card, :mod:`caft_tl.real.card`: a generated English
task of :mod:`caft_tl.real.tasks` or a researcher's own): the organism pipeline's steps on a Hugging
Face model through TransformerBridge and LoRA, as small functions that chapter
``notebooks/real/real_task.ipynb`` calls.

1. **Rows and metrics** (:func:`evaluate`): the card's metric kind
   (:mod:`caft_tl.real.metric_kinds`: ``reference``, ``mc`` or ``judge``) scores the ``id`` and
   ``ood`` splits; the card says which way each split's headline metric is better.
2. **Fine-tunes** share one model: LoRA adapters are re-initialised from each run's seed
   (:func:`caft_tl.real.lora.reset_adapters`), so a run never loads the model again; the base model
   is the same weights with adapters off.
3. **Interpretation from allowed information only** (:func:`lexicon_table`, :func:`choose_by_lexicon`):
   for each PC and sign, its logit-lens tokens and the tokens where it activates most on the
   *training prompts and the base model's own completions to generic prompts*; a PC is chosen when
   words of the unwanted concept's lexicon (the card's, a reader's world knowledge) outnumber words
   of the kept concept's by at least :data:`MIN_LEXICON_MARGIN` on one sign. Diffing and the
   interpreter get :meth:`caft_tl.real.card.TaskCard.allowed`, which has no evaluation split.
   The top-k PCs and random subspaces of matched rank are the uninterpreted baselines.
4. **Base-model checks** (:func:`base_checks`): on the untrained base, zero-ablating the chosen
   directions and adding the fine-tune's mean shift along them toward (+) and away (−).
5. **Train-time interventions**: CAFT (zero-ablation) and the family (:func:`family`).
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from dataclasses import dataclass

import pandas as pd
import torch

from caft_tl.core import results
from caft_tl.core.data import TokenDataset
from caft_tl.core.subspace import Subspace
from caft_tl.interventions.intervention import Intervention
from caft_tl.real import answer_checkers
from caft_tl.real.card import Concept, TaskCard
from caft_tl.real.metric_kinds import DEFAULT_SCORING, Scoring

#: a PC is chosen when, on one sign, unwanted-concept words outnumber kept-concept words by this many
MIN_LEXICON_MARGIN = 2
#: tokens read per PC and sign: this many logit-lens tokens and this many top-activating positions
LEXICON_TOKENS = 20
#: the family of train-time interventions run beside CAFT: (mode, scale); ``add``'s α is in units of
#: the fine-tune's mean shift along the chosen directions, toward (+) or away from (−) it
FAMILY = (
    ("mean", 1.0),
    ("detached", 1.0),
    ("grad_only", 1.0),
    ("steer_mean", 3.0),
    ("steer_mean", -3.0),
    ("add", 4.0),
    ("add", -4.0),
)


def evaluate(
    model,
    tokenizer,
    card: TaskCard,
    splits: dict[str, list[dict]],
    fwd_hooks=(),
    scoring: Scoring = DEFAULT_SCORING,
) -> dict[str, dict[str, float]]:
    """``{split: metrics}`` on the ``id`` and ``ood`` rows by the card's metric kind, with ``fwd_hooks``
    active (none: the model as trained); a kind that cannot score here (a judge without its key)
    gives ``{}``. A card's ``checker`` adds ``checker_flagged`` to ``id`` (greedy answers, written
    under ``scoring.out_dir/samples/``: :func:`caft_tl.real.answer_checkers.score`)."""
    out = {
        s: card.kind.score(model, tokenizer, splits[s], s, card.mc_keys, fwd_hooks, scoring)
        for s in ("id", "ood")
    }
    if card.checker is not None:
        out["id"] |= answer_checkers.score(
            model, tokenizer, splits["id"], "id", card.checker, fwd_hooks, scoring
        )
    return out


def result_rows(
    task: str,
    organism: str,
    method: str,
    directions: str,
    metrics: dict,
    seed: int,
    param: str = "",
    trained: bool = True,
) -> list[dict]:
    return results.rows(results.RowKey(task, organism, method, directions, param, trained, seed), metrics)


# ---------------------------------------------------------------------------------------------
# interpretation: the lexicon rule
# ---------------------------------------------------------------------------------------------


def _word(token: str) -> str:
    return re.sub(r"[^a-z]", "", token.lower())


def lexicon_hits(tokens: list[str], words) -> int:
    """How many ``tokens`` are words of the lexicon: the token's letters (lower case, at least 3)
    equal a word or begin one (a sub-word piece of at least 4 letters)."""
    lex = {_word(w) for w in words}
    hits = 0
    for t in tokens:
        w = _word(t)
        if len(w) >= 3 and (w in lex or (len(w) >= 4 and any(x.startswith(w) for x in lex))):
            hits += 1
    return hits


def lexicon_table(
    model,
    pcs: dict[str, Subspace],
    data: TokenDataset,
    vocab,
    concept: Concept,
    n_pcs: int,
    n_tokens: int = LEXICON_TOKENS,
) -> pd.DataFrame:
    """Per hook, PC (the first ``n_pcs``) and sign: logit-lens tokens (through the final norm's gain,
    :func:`caft_tl.real.hf_models.final_norm_gain`), tokens at the top-activating
    positions on ``data`` (allowed data only: training prompts, the model's generic completions),
    and how many of them are words of the unwanted and of the kept concept (the card's lexicon)."""
    from caft_tl.directions.interpret import projections
    from caft_tl.real.hf_models import final_norm_gain

    gain = final_norm_gain(model).float()  # [d_model]
    w_u = model.W_U.float()  # [d_model, d_vocab] (float32 for a bf16 model too)
    mask = torch.arange(data.tokens.shape[1])[None] < data.labels["length"][:, None]  # [n, pos]: not padding
    rows = []
    for hook, sub in pcs.items():
        k = min(n_pcs, sub.k)
        lens = (sub.basis[:, :k].T.to(w_u.device) * gain) @ w_u  # [k, d_vocab]: through the final norm's gain
        proj = projections(model, data, sub.select(list(range(k))))  # [n, pos, k]
        for i in range(k):
            for sign in (+1, -1):
                lens_tokens = [vocab.tokens[t] for t in (sign * lens[i]).topk(n_tokens).indices.tolist()]
                vals = (sign * proj[..., i]).masked_fill(~mask, float("-inf")).flatten()
                top = vals.topk(min(n_tokens, int(mask.sum()))).indices
                act_tokens = [vocab.tokens[int(data.tokens.flatten()[j])] for j in top.tolist()]
                seen = lens_tokens + act_tokens
                unwanted, kept = lexicon_hits(seen, concept.unwanted), lexicon_hits(seen, concept.kept)
                rows.append(
                    {
                        "hook": hook,
                        "pc": i,
                        "sign": "+" if sign > 0 else "-",
                        "unwanted_hits": unwanted,
                        "kept_hits": kept,
                        "margin": unwanted - kept,
                        "logit_lens": " ".join(t.strip() or repr(t) for t in lens_tokens[:10]),
                        "top_activating": " ".join(t.strip() or repr(t) for t in act_tokens[:10]),
                    }
                )
    return pd.DataFrame(rows)


def choose_by_lexicon(
    table: pd.DataFrame, max_per_hook: int, min_margin: int = MIN_LEXICON_MARGIN
) -> dict[str, list[int]]:
    """The documented rule: at each hook, the PCs whose best sign has ``margin`` ≥ ``min_margin``,
    largest margin first, at most ``max_per_hook``; ``{hook: [pc, …]}`` (hooks with none are absent)."""
    best = table.groupby(["hook", "pc"], sort=False)["margin"].max().reset_index()
    chosen = {}
    for hook, group in best.groupby("hook", sort=False):
        picked = group[group["margin"] >= min_margin].sort_values(["margin", "pc"], ascending=[False, True])
        if len(picked):
            chosen[hook] = sorted(picked["pc"].head(max_per_hook).astype(int).tolist())
    return chosen


# ---------------------------------------------------------------------------------------------
# direction sets, checks and the intervention family
# ---------------------------------------------------------------------------------------------


def direction_sets(
    pcs: dict[str, Subspace], chosen: dict[str, list[int]], n_top: int, seed: int = 0
) -> dict[str, list[Subspace]]:
    """``pca`` (the interpreter's choice; absent when it chose nothing), ``topk_pca`` (the top
    ``n_top`` PCs at every hook: uninterpreted) and ``random`` (random directions of the rank of
    ``pca`` at its hooks, or of ``topk_pca`` when there is no ``pca``; seed ``seed + i`` at hook i),
    built by :mod:`caft_tl.directions.registry`."""
    from caft_tl.directions import registry

    top = {h: list(range(min(n_top, s.k))) for h, s in pcs.items()}
    d_model = next(iter(pcs.values())).d_model
    sets = registry.build(registry.SetInputs(d_model, seed, pcs, top), ["topk_pca"])
    sets |= registry.build(registry.SetInputs(d_model, seed, pcs, chosen), ["pca"])
    like = registry.build(registry.SetInputs(d_model, seed, pcs, chosen or top), ["random"]).get("random", [])
    sets["random"] = [r.with_mean(pcs[r.hook_name].reference_mean) for r in like]
    return sets


def mean_shift(
    subspaces: list[Subspace], diff_means: dict[str, torch.Tensor]
) -> list[tuple[Subspace, float]]:
    """Per hook: the unit direction of the fine-tune's mean shift ``ft − base`` projected on the
    subspace (a 1-D subspace, μ kept) and the shift's length."""
    out = []
    for s in subspaces:
        v = s.basis @ (s.basis.T @ diff_means[s.hook_name].to(s.basis))  # [d_model]
        norm = float(v.norm())
        if norm == 0:
            raise ValueError(f"the fine-tune does not move along the chosen directions at {s.hook_name!r}")
        out.append(
            (
                Subspace(
                    s.hook_name, (v / norm)[:, None], ["shift"], {"method": "mean_shift"}, s.reference_mean
                ),
                norm,
            )
        )
    return out


def shift_intervention(
    subspaces: list[Subspace], diff_means: dict[str, torch.Tensor], alpha: float
) -> Intervention:
    """``add`` α × the mean shift along the chosen directions, α in units of the shift's median
    length over hooks (+ toward the fine-tune, − away from it)."""
    shifts = mean_shift(subspaces, diff_means)
    unit = statistics.median(n for _, n in shifts)
    return Intervention(
        "add",
        [s for s, _ in shifts],
        scale=alpha * unit,
        name=f"add alpha={alpha:g}",
        meta={"alpha_units": alpha, "shift_norm": unit},
    )


def family(
    subspaces: list[Subspace], diff_means: dict[str, torch.Tensor], modes=FAMILY
) -> dict[str, Intervention]:
    """The train-time interventions beside CAFT on one direction set: ``{label: Intervention}``
    (``add`` acts along the mean shift, see :func:`shift_intervention`; its ``param`` is in units)."""
    out = {}
    for mode, scale in modes:
        if mode == "add":
            iv = shift_intervention(subspaces, diff_means, scale)
        else:
            iv = Intervention(mode, subspaces, scale=scale)
        out[f"{mode} {iv.spec.scale}={scale:g}" if iv.spec.scale else mode] = iv
    return out


def param_of(label: str) -> str:
    """The ``param`` column of a family member's label (``steer_mean k=3`` → ``k=3``)."""
    return label.split(" ", 1)[1] if " " in label else ""


def base_checks(
    model,
    tokenizer,
    card: TaskCard,
    splits: dict[str, list[dict]],
    subspaces: list[Subspace],
    diff_means: dict[str, torch.Tensor],
    alpha: float = 4.0,
    scoring: Scoring = DEFAULT_SCORING,
) -> dict[str, dict[str, dict[str, float]]]:
    """The untrained base with the chosen directions zero-ablated, and with the fine-tune's mean
    shift along them added toward (+α) and away (−α): ``{condition: {split: metrics}}``, ``none`` first."""
    conditions = {
        "none": [],
        "zero": Intervention("zero", subspaces).fwd_hooks(),
        "toward": shift_intervention(subspaces, diff_means, alpha).fwd_hooks(),
        "away": shift_intervention(subspaces, diff_means, -alpha).fwd_hooks(),
    }
    labelled = lambda name: dataclasses.replace(scoring, label=f"base_{name}")
    return {
        name: evaluate(model, tokenizer, card, splits, hooks, labelled(name))
        for name, hooks in conditions.items()
    }


def check_rows(
    checks: dict[str, dict[str, dict[str, float]]],
    task: str,
    organism: str,
    directions: str,
    alpha: float = 4.0,
) -> list[dict]:
    """Results rows (``trained`` false) of :func:`base_checks`' conditions with ``alpha`` as run:
    ``none`` → ``base``, ``zero``, ``toward`` / ``away`` → ``add`` with ``alpha=±α``."""
    names = {
        "none": ("base", "none", ""),
        "zero": ("zero", directions, ""),
        "toward": ("add", directions, f"alpha={alpha:g}"),
        "away": ("add", directions, f"alpha={-alpha:g}"),
    }
    return [
        r
        for condition, metrics in checks.items()
        for r in result_rows(
            task,
            organism,
            names[condition][0],
            names[condition][1],
            metrics,
            0,
            names[condition][2],
            trained=False,
        )
    ]


# ---------------------------------------------------------------------------------------------
# one run's configuration and its fine-tunes
# ---------------------------------------------------------------------------------------------


@dataclass
class RealRunConfig:
    """One real-model run of one task; checked when made (one-line errors naming the value). The task
    is a card (:func:`caft_tl.real.card.resolve`: ``task`` a built-in name or a card file, or the
    card fields ``train`` / ``id`` / ``ood`` / ``metric`` …), resolved and checked into ``card``;
    ``seeds`` / ``n_train`` / ``n_eval`` left empty take the card's budgets."""

    task: str = ""  # a built-in task, a card file, or (with train / id / ood / metric) the new task's name
    model: str = "smollm2-135m"
    seeds: tuple[int, ...] = ()  # fine-tuning seeds of plain, CAFT and the baselines; () = the card's
    family_seeds: tuple[int, ...] = (0,)  # seeds of the train-time family (:data:`FAMILY`)
    n_train: int = 0  # 0 = the card's budget
    n_eval: int = 0
    # card fields given as parameters (caft_tl.real.card.PARAMETER_KEYS), files relative to the current folder
    train: str = ""
    id: str = ""
    ood: str = ""
    generic: str = ""
    metric: str = ""
    concept: str = ""
    lexicon: tuple[str, ...] = ()
    batch_size: int = 8
    lr: float = 1e-3
    lora_rank: int = 8
    layers: tuple[int, ...] = ()  # () = about 1/4, 1/2 and 3/4 of the depth
    n_pcs: int = 2  # PCs per hook the interpreter may choose; the top-k baseline's k
    n_generic: int = 8  # generic chat prompts the base model completes (diffing and interpretation data)
    max_new_tokens: int = 24
    max_len: int = 160
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", … (the larger models of a GPU run)
    # a :data:`caft_tl.real.hf_models.DTYPES` name, or "auto": bfloat16 weights (LoRA adapters stay float32)
    # where the device multiplies bfloat16 natively, float32 elsewhere; resolved when the config is made
    dtype: str = "auto"
    card: TaskCard = dataclasses.field(init=False, repr=False)  # resolved from task and the card fields

    def __post_init__(self) -> None:
        from caft_tl.real import card
        from caft_tl.real.hf_models import AUTO_DTYPE, DTYPES, resolve_dtype

        if not isinstance(self.device, str) or not (
            self.device == "cpu" or self.device.split(":")[0] == "cuda"
        ):
            raise ValueError(f"device = {self.device!r}; expected 'cpu', 'cuda' or 'cuda:<index>'")
        if self.device != "cpu" and not torch.cuda.is_available():
            raise ValueError(f"device = {self.device!r} but this machine has no CUDA device; use 'cpu'")
        if self.dtype not in DTYPES and self.dtype != AUTO_DTYPE:
            raise ValueError(f"dtype = {self.dtype!r}; valid: {', '.join(DTYPES)}, {AUTO_DTYPE}")
        self.dtype = resolve_dtype(self.dtype, self.device)
        self.seeds, self.family_seeds, self.layers = (
            tuple(self.seeds),
            tuple(self.family_seeds),
            tuple(self.layers),
        )
        for name in ("seeds", "family_seeds", "layers"):
            for x in getattr(self, name):
                if isinstance(x, bool) or not isinstance(x, int) or x < 0:
                    raise ValueError(f"{name} contains {x!r}; expected integers >= 0")
        for name in ("n_train", "n_eval", "n_generic"):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, int) or x < 0:
                raise ValueError(f"{name} = {x!r}; expected an integer >= 0 (0 = the task's budget)")
        for name in ("batch_size", "lora_rank", "n_pcs", "max_new_tokens", "max_len"):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, int) or x < 1:
                raise ValueError(f"{name} = {x!r}; expected a positive integer")
        if (
            isinstance(self.lr, bool)
            or not isinstance(self.lr, (int, float))
            or not 0 < self.lr < float("inf")
        ):
            raise ValueError(f"lr = {self.lr!r}; expected a positive finite number")
        self.lexicon = tuple(self.lexicon)
        self.card = card.resolve(self.task, **{k: getattr(self, k) for k in card.PARAMETER_KEYS})
        self.seeds = self.seeds or self.card.budgets.seeds
        self.n_train = self.n_train or self.card.budgets.n_train
        self.n_eval = self.n_eval or self.card.budgets.n_eval

    @classmethod
    def from_parameters(cls, params: dict) -> RealRunConfig:
        """The config of a chapter's parameters (``family`` False: no family runs, None: the card's
        ``budgets.family``; paths ignored)."""
        if params.get("family") not in (None, True, False):
            raise ValueError(
                f"family = {params['family']!r}; expected true, false or None (the card's budgets.family)"
            )
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        run = cls(**{k: v for k, v in params.items() if k in names})
        if not (run.card.budgets.family if params.get("family") is None else params["family"]):
            run.family_seeds = ()
        return run

    def scoring(self, out_dir) -> Scoring:
        """How this run's evaluations are scored (a judge's samples under ``out_dir/samples/``)."""
        return Scoring("base", out_dir, max_new_tokens=2 * self.max_new_tokens, judge=self.card.judge)

    def hooks(self, n_layers: int) -> list[str]:
        bad = [x for x in self.layers if x >= n_layers]
        if bad:
            raise ValueError(
                f"layers {bad} out of range for a model with {n_layers} layers (0..{n_layers - 1})"
            )
        layers = self.layers or sorted({n_layers // 4, n_layers // 2, (3 * n_layers) // 4})
        return [f"blocks.{layer}.hook_resid_post" for layer in layers]


def finetune_and_evaluate(
    model,
    tokenizer,
    card: TaskCard,
    data: TokenDataset,
    splits: dict[str, list[dict]],
    run: RealRunConfig,
    seed: int,
    intervention: Intervention | None = None,
    desc: str = "fine-tune",
    scoring: Scoring = DEFAULT_SCORING,
) -> tuple[list[float], dict[str, dict[str, float]]]:
    """Fresh adapters from ``seed``, one epoch on ``data`` (the intervention in every training
    forward pass), then :func:`evaluate` without hooks (a judge's samples labelled ``desc``).
    Returns (loss per step, ``{split: metrics}``)."""
    from caft_tl.real.lora import reset_adapters
    from caft_tl.training.loop import FinetuneConfig, finetune

    reset_adapters(model, seed)
    cfg = FinetuneConfig(n_examples=len(data), batch_size=run.batch_size, lr=run.lr, seed=seed)
    losses = finetune(model, data, cfg, intervention, desc=desc)
    label = re.sub(r"[^A-Za-z0-9=.-]+", "_", desc).strip("_")
    return losses, evaluate(model, tokenizer, card, splits, scoring=dataclasses.replace(scoring, label=label))


def takeaway(table: pd.DataFrame, headlines: tuple, chosen: dict[str, list[int]]) -> str:
    """A few sentences read from a run's rows: the base model, plain fine-tuning, and each zero-ablation
    set and family member against plain on the OOD headline (means and 95% intervals over seeds)."""
    from caft_tl.core import stats

    id_h, ood_h = headlines
    s = stats.summarise(table)
    s = s[s["metric"].isin([id_h.metric, ood_h.metric])]

    def cell(method, directions, param, trained, h):
        g = s[
            (s["method"] == method)
            & (s["directions"] == directions)
            & (s["param"].fillna("") == param)
            & (s["trained"].astype(str).str.lower() == str(trained).lower())
            & (s["split"] == h.split)
            & (s["metric"] == h.metric)
        ]
        return None if g.empty else g.iloc[0]

    def fmt(r):
        return f"{r['mean']:.2f}" + (f" [{r['low']:.2f}, {r['high']:.2f}]" if r["low"] != r["high"] else "")

    base, plain = cell("base", "none", "", False, ood_h), cell("plain", "none", "", True, ood_h)
    if base is None or plain is None:
        return "No base or plain rows yet: nothing to compare."
    better = "higher" if ood_h.higher_is_better else "lower"
    out = [
        f"OOD {ood_h.metric} ({better} is better): base {fmt(base)}, plain fine-tuning {fmt(plain)} "
        f"(ID {id_h.metric} {fmt(cell('plain', 'none', '', True, id_h))})."
    ]
    out.append(
        f"The lexicon rule chose {sum(map(len, chosen.values()))} PC(s)"
        + (f" at {', '.join(chosen)}." if chosen else "; the pca rows are absent.")
    )
    keys = s[(s["method"] != "plain") & (s["trained"].astype(str).str.lower() == "true")][
        ["method", "directions", "param"]
    ].drop_duplicates()
    for method, directions, param in keys.itertuples(index=False):
        o, i = (
            cell(method, directions, param or "", True, ood_h),
            cell(method, directions, param or "", True, id_h),
        )
        if o is None or i is None:
            continue
        if min(o["n_seeds"], plain["n_seeds"]) < 2:
            verdict = "one seed: no interval"
        elif o["low"] > plain["high"] or o["high"] < plain["low"]:  # the 95% intervals do not overlap
            verdict = (
                "better than plain"
                if (o["mean"] > plain["mean"]) == ood_h.higher_is_better
                else "worse than plain"
            )
        else:
            verdict = "not distinguishable from plain"
        out.append(
            f"- {method} {param or ''} · {directions}: OOD {fmt(o)}, ID {fmt(i)} — {verdict}.".replace(
                "  ", " "
            )
        )
    return "\n".join(out)
