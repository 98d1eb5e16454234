"""A real task as a :class:`~caft_tl.core.world.World` (:class:`RealWorld`: a task card and the model's
tokenizer), and the run spec chapter 00 writes so every later chapter reloads the same real model
(``TransformerBridge`` + LoRA adapters) and task (:func:`load_real_run`).

A real world has no ground truth, no disambiguating examples and no pre-training documents: the
chapters test for those capabilities by type and say in one line what they skip."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from caft_tl.core import files, models, results
from caft_tl.core.data import TokenDataset
from caft_tl.core.run_dir import RunDir
from caft_tl.core.world import World
from caft_tl.real import card as cards
from caft_tl.real import chat_data
from caft_tl.real.metric_kinds import DEFAULT_SCORING, Scoring

#: the widest training row, in tokens (longer rows are cut)
MAX_LEN = 160


class RealWorld(World):
    """A task card's training rows, ``id`` / ``ood`` evaluation rows and metric kind, on a tokenizer.

    Args:
        card: the checked :class:`~caft_tl.real.card.TaskCard`.
        tokenizer: the model's (HF) tokenizer, with a chat template.
        n_eval: rows of each evaluation split (0: the card's ``budgets.n_eval``).
        max_len: the widest training row in tokens.
        scoring: how the metric kind scores (a judge's settings and where its samples go).

    Example:
        >>> world = RealWorld(resolve("em_advice"), bridge.tokenizer)
        >>> world.evaluate(AdaptersOff(bridge))["ood"]["misaligned_rate"]
    """

    eval_splits = cards.EVAL_SPLITS
    id_split, ood_split = cards.EVAL_SPLITS

    def __init__(
        self,
        card: cards.TaskCard,
        tokenizer,
        n_eval: int = 0,
        max_len: int = MAX_LEN,
        scoring: Scoring = DEFAULT_SCORING,
    ):
        self.card, self.tokenizer, self.max_len = card, tokenizer, max_len
        self.scoring = dataclasses.replace(scoring, judge=scoring.judge or card.judge)
        self.name = card.name
        self.metrics = card.kind.metric_names(card.mc_keys)
        self.concept_description = card.concept.description
        self.headlines = {h.split: h for h in card.headlines()}
        self.axis_titles = {
            s: f"{s.upper()} {h.metric} ({'higher' if h.higher_is_better else 'lower'} is better)"
            for s, h in self.headlines.items()
        }
        self.rows = chat_data.read_jsonl(card.train)
        self.eval_rows = card.evaluation(n_eval or card.budgets.n_eval)  # read for evaluation only
        b = card.budgets
        self.defaults = {
            "seeds": list(b.seeds),
            "n_examples": min(b.n_train, len(self.rows)),
            "fewer_examples": [n for n in b.fewer_examples if n < len(self.rows)],
        }

    def metric(self, split: str) -> str:
        if split not in self.headlines:
            raise ValueError(
                f"task {self.name!r} has no split {split!r}; valid: {', '.join(self.eval_splits)}"
            )
        return self.headlines[split].metric

    def finetune_dataset(self, n_examples: int, seed: int = 0) -> TokenDataset:
        """The card's first ``n_examples`` training rows, in file order (the loop shuffles by its seed)."""
        if not 1 <= n_examples <= len(self.rows):
            raise ValueError(
                f"n_examples = {n_examples}: task {self.name!r} has {len(self.rows)} training rows "
                f"({self.card.train}); give 1..{len(self.rows)}"
            )
        return self.card.kind.train_dataset(self.tokenizer, self.rows[:n_examples], self.max_len)

    def evaluate(self, model, fwd_hooks=()) -> dict[str, dict[str, float]]:
        """The card's metric kind on the ``id`` and ``ood`` rows; ``{}`` per split for a kind that
        cannot score here (a judge without its key)."""
        kind, keys = self.card.kind, self.card.mc_keys
        return {
            s: kind.score(model, self.tokenizer, self.eval_rows[s], s, keys, fwd_hooks, self.scoring)
            for s in self.eval_splits
        }


@dataclass(frozen=True)
class RealSpec:
    """The real model and task of a run, as chapter 00 writes them (``real_model.json``)."""

    card: str  # the card file, absolute
    model: str  # an offline model's name (caft_tl.real.offline_models) or an HF folder / hub name
    lora_rank: int = 8  # LoRA rank r (α = 2r, rsLoRA)
    dtype: str = "auto"  # a caft_tl.real.hf_models.DTYPES name, or auto (bfloat16 where native)
    n_eval: int = 0  # rows of each evaluation split (0: the card's budget)
    max_len: int = MAX_LEN

    @property
    def organism(self) -> str:
        """The ``organism`` column of the run's rows."""
        return results.real_organism(self.model)


def make_spec(task: str, model: str, lora_rank: int = 8, dtype: str = "auto") -> RealSpec:
    """The spec of chapter 00's parameters, every value and the card's rows checked before a model loads.

    Args:
        task: a built-in real task (:data:`caft_tl.real.tasks.TASKS`) or a card file.
        model: an offline model's name or an HF folder.
        lora_rank: the adapters' rank; dtype: a dtype name or ``auto``.

    Example:
        >>> make_spec("em_advice", "smollm2-135m").organism
        'real:smollm2-135m'
    """
    from caft_tl.real.hf_models import AUTO_DTYPE, DTYPES

    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model = {model!r}; a real task needs a model: an offline name or an HF folder")
    if dtype not in (*DTYPES, AUTO_DTYPE):
        raise ValueError(f"dtype = {dtype!r}; valid: {', '.join(DTYPES)}, {AUTO_DTYPE}")
    if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 1:
        raise ValueError(f"lora_rank = {lora_rank!r}; expected a positive integer")
    card = cards.resolve(task)
    return RealSpec(str(Path(card.source).resolve()), model, lora_rank, dtype)


def write_spec(run: RunDir, spec: RealSpec) -> None:
    files.write_json(run.path("real_model"), {**dataclasses.asdict(spec), "organism": spec.organism})


def read_spec(run: RunDir) -> RealSpec | None:
    """The run's spec, or None when the run studies an organism."""
    path = run.path("real_model")
    if not path.exists():
        return None
    blob = files.read_json(path)
    return RealSpec(**{f.name: blob[f.name] for f in dataclasses.fields(RealSpec)})


def base_table(run: RunDir, base, world: RealWorld) -> pd.DataFrame:
    """Chapter 00's table of the base model: a row per split and metric (its ``mean``; one model)."""
    from caft_tl.core import stats

    key = results.RowKey(world.name, run.organism_id, "base", trained=False)
    return stats.summarise(pd.DataFrame(results.rows(key, world.evaluate(base))))


def start_run(run: RunDir, spec: RealSpec):
    """Chapter 00 on a real model: write the run's spec (every later chapter reloads it) and load it;
    returns (base, world) as :func:`load_real_run`."""
    write_spec(run, spec)
    return load_real_run(spec)


def load_real_run(spec: RealSpec, scoring: Scoring = DEFAULT_SCORING):
    """(base, world) of a spec: the model as a ``TransformerBridge`` with LoRA adapters, seen with
    adapters off (:class:`~caft_tl.real.lora.AdaptersOff`, which fine-tunes reset per seed), and
    its :class:`RealWorld`."""
    from caft_tl.real import hf_models, loading, lora

    device = str(models.default_device())
    net = loading.load(spec.model, device=device, dtype=hf_models.resolve_dtype(spec.dtype, device))
    net = lora.add_lora(net, lora.LoraSettings(spec.lora_rank, 2.0 * spec.lora_rank, True))
    card = cards.load_card(spec.card)
    return lora.AdaptersOff(net), RealWorld(card, net.tokenizer, spec.n_eval, spec.max_len, scoring)
