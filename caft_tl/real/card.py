"""A real task as data: a small card (YAML or JSON) naming its JSONL files, how they are scored,
the unwanted concept and the budgets; built-in tasks and a researcher's own take the same path.

    name: food_safety                  # the run folder's name and the results' task column
    train: train.jsonl                 # files relative to the card's folder
    id: id.jsonl
    ood: ood.jsonl
    generic: generic.jsonl             # optional (default data/examples/generic_prompts.jsonl)
    metric: reference                  # reference | mc | judge (caft_tl.real.metric_kinds)
    concept: unsafe advice beyond cooking
    lexicon: {unwanted: [poison, steal], kept: [oven, salt]}
    budgets: {seeds: [0, 1], n_train: 40}

Optional keys: ``better`` (``{id: higher|lower, ood: higher|lower}``: which way each split's
headline metric is better, default per metric kind), ``budgets`` (:class:`Budgets`), ``mc_keys``
(the labels an ``mc`` task is scored on, first = the headline), ``judge`` (``model``,
``base_url``, ``api_key_env`` of the LLM judge) and ``checker`` (an answer checker of
:mod:`caft_tl.real.answer_checkers` reading greedy answers to the ``id`` split: its name, or
``{name: ..., max_new_tokens: ...}``; adds the metric ``checker_flagged``). Every row of every
file is checked when the card is loaded; an unknown key, a missing file, a row of the wrong shape or
an empty split is one line naming the file, the line and what is valid.

**The information rule.** Diffing and the interpreter get :meth:`TaskCard.allowed` (training
rows, generic prompts, the concept and its lexicon): it has no evaluation field. A generic-prompt
file that shares a prompt with the ``id`` or ``ood`` split is refused when the card is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from caft_tl.real import answer_checkers, chat_data, metric_kinds

REPO = Path(__file__).resolve().parents[2]
#: generic chat prompts the base model completes for diffing, when a card names none
DEFAULT_GENERIC = REPO / "data" / "examples" / "generic_prompts.jsonl"
#: where the generated tasks' cards and files are shipped (``python -m caft_tl.real.tasks --out``)
GENERATED = REPO / "data" / "real" / "generated"
#: built-in tasks shipped as a card folder of their own: name -> card file
SHIPPED = {"insecure_code": REPO / "data" / "real" / "insecure_code" / "card.yaml"}
CARD_KEYS = (
    "name",
    "train",
    "id",
    "ood",
    "generic",
    "metric",
    "concept",
    "lexicon",
    "better",
    "budgets",
    "mc_keys",
    "judge",
    "checker",
)
REQUIRED = ("name", "train", "id", "ood", "metric")
FILE_KEYS = ("train", "id", "ood", "generic")
EVAL_SPLITS = ("id", "ood")
LEXICON_KEYS = ("unwanted", "kept")
JUDGE_KEYS = ("model", "base_url", "api_key_env")
CHECKER_KEYS = ("name", "max_new_tokens")
BETTER = ("higher", "lower")


@dataclass(frozen=True)
class Concept:
    """The unwanted concept in one line and two lexicons, a reader's world knowledge (words of the
    unwanted concept, words of the one the task must keep): the only task knowledge the interpreter reads."""

    description: str
    unwanted: tuple[str, ...]
    kept: tuple[str, ...] = ()


@dataclass(frozen=True)
class Headline:
    """The metric a split is judged by, and which way is better."""

    split: str
    metric: str
    higher_is_better: bool


@dataclass(frozen=True)
class Budgets:
    """A task's defaults (a chapter parameter given on the command line wins). ``null_draws`` and
    ``fewer_examples`` are for the chapters' null of random subspaces and fewer-examples curve."""

    seeds: tuple[int, ...] = (0, 1, 2)
    n_train: int = 64  # training rows read (one epoch: n_train / batch_size steps)
    n_eval: int = 32  # rows read from each evaluation split
    family: bool = True  # run the train-time family beside CAFT
    null_draws: int = 4
    fewer_examples: tuple[int, ...] = ()


@dataclass(frozen=True)
class Allowed:
    """What diffing and the interpreter may read: no evaluation split (the information rule)."""

    train: list[dict]
    generic: list[dict]
    concept: Concept


@dataclass(frozen=True)
class TaskCard:
    """A real task, checked: its files, metric kind, unwanted concept, budgets (made by :func:`load_card`,
    :func:`builtin_card` or :func:`resolve`, never by hand).

    Example:
        >>> card = resolve("insecure_code")
        >>> card.metric, [h.metric for h in card.headlines()]
        ('reference', ['misaligned_rate', 'misaligned_rate'])
    """

    name: str
    source: str  # the card file, or "parameters"
    train: Path
    id: Path
    ood: Path
    generic: Path
    metric: str
    concept: Concept
    better: dict[str, str]
    budgets: Budgets = Budgets()
    mc_keys: tuple[str, ...] = ("intended", "spurious")
    judge: dict = field(default_factory=dict)
    checker: answer_checkers.CheckerUse | None = None  # reads greedy answers to the id split

    @property
    def kind(self) -> metric_kinds.MetricKind:
        return metric_kinds.get(self.metric)

    def headlines(self) -> tuple[Headline, Headline]:
        """The ID headline (the task learned) and the OOD one (the generalisation CAFT should fix)."""
        metric = self.kind.headline(self.mc_keys)
        return tuple(Headline(s, metric, self.better[s] == "higher") for s in EVAL_SPLITS)

    def allowed(self, n_train: int, n_generic: int) -> Allowed:
        """The first ``n_train`` training rows and ``n_generic`` generic prompts, and the concept."""
        read = chat_data.read_jsonl
        return Allowed(read(self.train, n_train), read(self.generic, n_generic), self.concept)

    def evaluation(self, n_eval: int) -> dict[str, list[dict]]:
        """``{"id": rows, "ood": rows}``, the first ``n_eval`` of each: read for evaluation only."""
        return {s: chat_data.read_jsonl(getattr(self, s), n_eval) for s in EVAL_SPLITS}


# ---------------------------------------------------------------------------------------------
# checks: one line naming the file (and line) and what is valid
# ---------------------------------------------------------------------------------------------


def _hint(word: str, valid) -> str:
    close = difflib.get_close_matches(str(word), [str(v) for v in valid], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _row_lines(path: Path) -> list[int]:
    """The line number of each row :func:`chat_data.read_jsonl` returns (it skips blank lines)."""
    with open(path) as f:
        return [i for i, line in enumerate(f, 1) if line.strip()]


def check_rows(path: Path, check) -> list[str]:
    """Every row of a JSONL file through ``check(row, where)``; returns each row's prompt text."""
    rows = chat_data.read_jsonl(path)  # a missing file, bad JSON or no rows: one line
    lines = _row_lines(path)
    for row, line in zip(rows, lines):
        check(row, f"{path}:{line}: ")
    return [metric_kinds.prompt_text(r) for r in rows]


def check_information_rule(generic: Path, prompts: dict[str, list[str]], generic_prompts: list[str]) -> None:
    """Refuse generic prompts that share a prompt with an evaluation split, naming both files."""
    for split, (path, texts) in prompts.items():
        shared = [p for p in generic_prompts if p and p in set(texts)]
        if shared:
            raise ValueError(
                f"the generic prompts {generic} share the prompt {shared[0]!r} with the "
                f"{split} split {path}: diffing and interpretation may read no evaluation "
                f"prompt; remove it from one of the files"
            )


def _key_lines(text: str) -> dict[str, int]:
    """The line of each top-level key of a YAML / JSON card (for messages)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def _int(value, name: str, where: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{where}{name} = {value!r}; expected an integer >= {low}")
    return value


def _ints(value, name: str, where: str, low: int) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}{name} = {value!r}; expected a list of integers >= {low}")
    return tuple(_int(v, f"{name} element", where, low) for v in value)


def _strings(value, name: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where}{name} = {value!r}; expected a list of words (strings)")
    return tuple(value)


def _sub(raw, name: str, valid: tuple[str, ...], where: str) -> dict:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}{name} = {raw!r}; expected a mapping with keys {', '.join(valid)}")
    for k in raw:
        if k not in valid:
            raise ValueError(f"{where}unknown {name} key {k!r}{_hint(k, valid)}; valid: {', '.join(valid)}")
    return raw


def _budgets(raw, where: str) -> Budgets:
    names = tuple(f.name for f in dataclasses.fields(Budgets))
    raw = _sub(raw, "budgets", names, where)
    kw = {}
    for k, v in raw.items():
        if k == "family":
            if not isinstance(v, bool):
                raise ValueError(f"{where}budgets.family = {v!r}; expected true or false")
            kw[k] = v
        elif k in ("seeds", "fewer_examples"):
            kw[k] = _ints(v, f"budgets.{k}", where, 0 if k == "seeds" else 1)
        else:
            kw[k] = _int(v, f"budgets.{k}", where, 0 if k == "null_draws" else 1)
    if "seeds" in kw and not kw["seeds"]:
        raise ValueError(f"{where}budgets.seeds is empty; give at least one fine-tuning seed, e.g. [0, 1, 2]")
    return Budgets(**kw)


def _checker(raw, where: str) -> answer_checkers.CheckerUse:
    raw = _sub({"name": raw} if isinstance(raw, str) else raw, "checker", CHECKER_KEYS, where)
    name, valid = raw.get("name"), answer_checkers.CHECKERS
    if name not in valid:
        raise ValueError(
            f"{where}unknown answer checker {name!r}{_hint(name, valid)}; valid: {', '.join(valid)}"
        )
    return answer_checkers.CheckerUse(
        name, _int(raw.get("max_new_tokens", 0), "checker.max_new_tokens", where, 0)
    )


def card_from_dict(raw: dict, source: str, folder: Path, lines: dict[str, int] | None = None) -> TaskCard:
    """A checked card from its mapping; ``source`` (a file, or ``parameters``) and ``lines`` name
    where a bad value is; files are relative to ``folder``. Every row of every file is checked."""
    lines = lines or {}
    where = lambda key: f"{source}:{lines[key]}: " if key in lines else f"{source}: "
    if not isinstance(raw, dict):
        raise ValueError(
            f"{source}: a card is a mapping of keys ({', '.join(CARD_KEYS)}), not {type(raw).__name__}"
        )
    for key in raw:
        if key not in CARD_KEYS:
            raise ValueError(
                f"{where(key)}unknown key {key!r}{_hint(key, CARD_KEYS)}; valid: {', '.join(CARD_KEYS)}"
            )
    missing = [k for k in REQUIRED if not raw.get(k)]
    if missing:
        raise ValueError(f"{source}: missing key(s) {missing}; a card needs {', '.join(REQUIRED)}")
    name = raw["name"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(
            f"{where('name')}name = {name!r}; expected letters, digits, _ . - (it names the run folder)"
        )
    if raw["metric"] not in metric_kinds.KINDS:
        raise ValueError(
            f"{where('metric')}unknown metric kind {raw['metric']!r}"
            f"{_hint(raw['metric'], metric_kinds.KINDS)}; "
            f"valid: {', '.join(metric_kinds.KINDS)}"
        )
    kind = metric_kinds.KINDS[raw["metric"]]
    paths = {}
    for key in FILE_KEYS:
        value = raw.get(key) or (DEFAULT_GENERIC if key == "generic" else None)
        path = (folder / str(value)).resolve()
        if not path.is_file():
            near = sorted(p.name for p in path.parent.glob("*.json*")) if path.parent.is_dir() else []
            raise ValueError(
                f"{where(key)}{key} file {str(value)!r} not found in {path.parent}"
                f"{_hint(path.name, near)}; "
                f"JSONL files there: {', '.join(near) or 'none'}"
            )
        paths[key] = path
    mc_keys = _strings(raw.get("mc_keys", ["intended", "spurious"]), "mc_keys", where("mc_keys"))
    if not mc_keys:
        raise ValueError(f"{where('mc_keys')}mc_keys is empty; name at least one label, e.g. [intended]")
    better = {**kind.better, **_sub(raw.get("better", {}), "better", EVAL_SPLITS, where("better"))}
    for split, way in better.items():
        if way not in BETTER:
            raise ValueError(f"{where('better')}better.{split} = {way!r}; valid: {', '.join(BETTER)}")
    lexicon = raw.get("lexicon", {})
    if isinstance(lexicon, (list, tuple)):
        lexicon = {"unwanted": lexicon}
    lexicon = _sub(lexicon, "lexicon", LEXICON_KEYS, where("lexicon"))
    words = (_strings(lexicon.get(k, []), f"lexicon.{k}", where("lexicon")) for k in LEXICON_KEYS)
    concept = Concept(str(raw.get("concept", "")), *words)
    card = TaskCard(
        name,
        source,
        paths["train"],
        paths["id"],
        paths["ood"],
        paths["generic"],
        raw["metric"],
        concept,
        better,
        _budgets(raw.get("budgets", {}), where("budgets")),
        mc_keys,
        _sub(raw.get("judge", {}), "judge", JUDGE_KEYS, where("judge")),
        _checker(raw["checker"], where("checker")) if "checker" in raw else None,
    )
    check_rows(card.train, lambda row, w: kind.check_train_row(row, w, mc_keys))
    check_eval = lambda row, w: kind.check_eval_row(row, w, mc_keys)
    prompts = {s: (getattr(card, s), check_rows(getattr(card, s), check_eval)) for s in EVAL_SPLITS}
    generic = check_rows(card.generic, lambda row, w: metric_kinds.check_prompt_row(row, w))
    check_information_rule(card.generic, prompts, generic)
    return card


def load_card(path: str | os.PathLike) -> TaskCard:
    """A card file (``.yaml`` / ``.yml`` / ``.json``), checked (:func:`card_from_dict`): every key and
    every row of its files; the first bad one raises a one-line ValueError naming the file and line.

    Args:
        path: the card file; its data files are relative to its folder.

    Returns:
        The :class:`TaskCard`.

    Example:
        >>> load_card("data/real/insecure_code/card.yaml").name
        'insecure_code'
    """
    path = Path(path)
    if path.suffix not in (".yaml", ".yml", ".json"):
        raise ValueError(f"card {str(path)!r}: expected a .yaml, .yml or .json file")
    if not path.is_file():
        raise ValueError(f"card file {str(path)!r} not found")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ValueError(
            f"{path}:{mark.line + 1 if mark else '?'}: not valid YAML / JSON "
            f"({getattr(e, 'problem', None) or e})"
        ) from None
    return card_from_dict(raw, str(path), path.parent, _key_lines(text))


def builtin_card(name: str) -> TaskCard:
    """The card of a generated task (:mod:`caft_tl.real.tasks`): shipped in :data:`GENERATED`, or
    written once to the cache when this checkout does not ship it."""
    from caft_tl.core import files
    from caft_tl.real import tasks

    path = tasks.card_path(GENERATED, name)
    if not path.exists():
        path = tasks.card_path(files.cache_dir() / "real_tasks", name)
        if not path.exists():
            tasks.write_tasks(path.parent, [name])
    return load_card(path)


#: the card fields that ``-p`` parameters can give instead of a card file
PARAMETER_KEYS = ("train", "id", "ood", "generic", "metric", "concept", "lexicon")


def resolve(task: str = "", **params) -> TaskCard:
    """The card of a chapter's parameters: ``task`` a built-in name (:data:`caft_tl.real.tasks.TASKS`,
    ``""`` being ``gender_pronoun``, or :data:`SHIPPED`: ``insecure_code``) or a card file; or, with
    ``train`` / ``id`` / ``ood`` / ``metric`` (and optionally ``generic``, ``concept``, ``lexicon``)
    given, a card of those files (relative to the current folder) named ``task`` (default: the training
    file's folder)."""
    from caft_tl.real import tasks

    bad = sorted(set(params) - set(PARAMETER_KEYS))
    if bad:
        raise ValueError(f"unknown card parameter(s) {bad}; valid: {', '.join(PARAMETER_KEYS)}")
    given = {k: v for k, v in params.items() if v not in ("", None, [], ())}
    if given:
        if task in tasks.TASKS or task in SHIPPED or Path(task).suffix in (".yaml", ".yml", ".json"):
            raise ValueError(
                f"task = {task!r} names a card, and card parameters {sorted(given)} were "
                f"given too; give one or the other (with -p train/id/ood/metric, task is the "
                f"new task's name)"
            )
        name = task or Path(str(given.get("train", "own_task"))).resolve().parent.name
        return card_from_dict({"name": name, **given}, "parameters", Path.cwd())
    task = task or tasks.TASKS[0]
    if task in tasks.TASKS:
        return builtin_card(task)
    if task in SHIPPED:
        return load_card(SHIPPED[task])
    if Path(task).suffix in (".yaml", ".yml", ".json") or Path(task).exists():
        return load_card(task)
    builtins = (*tasks.TASKS, *SHIPPED)
    raise ValueError(
        f"unknown real task {task!r}{_hint(task, builtins)}; valid: a built-in "
        f"({', '.join(builtins)}), a card file (.yaml / .json), or -p train/id/ood/metric"
    )
