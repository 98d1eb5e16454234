"""``double_mc``: the spurious-correlation analogue (the CAFT paper's "double multiple choice").

A prompt holds two questions on two topics, in random order, then the generic instruction
``ANS_D``; the answer is ``A`` or ``B``. In the fine-tuning data the correct options of the two
questions agree, so the data can be solved by reading either topic; out of distribution (OOD)
they disagree and accuracy is scored against the *intended* topic::

    <bos> Q_sports team07 OA golf OB hockey Q_sentiment word_pos12 ANS_D → A

Two kinds of topic:

* ``lookup`` (sports): an item's class must be recalled (team → sport) and matched against two
  options in random order — a two-step computation the model does only when asked.
* ``salient`` (sentiment): a word's class decides the answer directly (class 0 → A). Pre-training
  *reviews* (``<bos> REV_sentiment`` followed by words of one class mixed with filler tokens) make
  the model track the context's sentiment at every position, as a language model tracks
  sentiment everywhere — the spurious topic is the one that is always already read.

Pre-training also holds facts (``Q_t item ANS_F class``), single questions, doubles with a topic
instruction (``ANS_sports``: the answer follows that topic, the other is random) and doubles under
the generic instruction ``ANS_D``. Their answer is a coin flip, or with probability ``2 · lean`` the
spurious topic's option: where the topics disagree the answer follows the spurious topic with
probability 0.5 + ``lean``. That is the design's **salience**: a language model's generic answer
leans on the cue it already tracks everywhere, a little. The base model's OOD accuracy is then
about 0.5 − ``lean`` (V1 still asks it to lie in 0.3–0.7, no strong preference), and plain
fine-tuning on data that either topic solves amplifies the lean into the spurious route.

Why the lean (a design decision, fixed before CAFT was run on these designs): with ``lean`` 0 —
the earlier design, reviews making sentiment salient but a pure coin flip under ``ANS_D`` — the
route plain fine-tuning took was decided by the pre-trained organism, not the design: 5 of 19
organisms read sentiment in both orders, and a fresh clone on another machine made another
organism from the same seed (plain OOD 1.00 where the developers saw 0.03). With ``lean`` 0.1,
plain fine-tuning reads sentiment in both orders on 15 of 16 organisms (pre-training seeds 0–15,
one thread; OOD accuracy 0.00 on both fine-tuning seeds of 14) and 13 of 16 organisms are valid
(V1–V3; one fails V1 with a weak intended skill, 0.86; one V3 at 0.797; one V2), and 15 of 16
with two pre-training threads (other floats, so other organisms from the same seeds): the share per
design, topic pair and thread count is in ``results/organism_search/`` and the README
(``scripts/validity_tables.py``). ``jitter`` = 2 removes the fixed position of the first block's
item; 3,000 pre-training steps make the intended skill reliable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from caft_tl.core.data import TokenDataset
from caft_tl.core.subspace import Subspace, orthonormalize
from caft_tl.organism.judge import HIT, MISS, OTHER, evaluate_task
from caft_tl.organism.task import Task
from caft_tl.organism.vocab import Vocab

if TYPE_CHECKING:
    import pandas as pd

KINDS = ("lookup", "salient")


@dataclass(frozen=True)
class Topic:
    """A question topic: ``n_items`` item tokens, each of one class (item ``i`` has class
    ``i % len(classes)``)."""

    name: str
    kind: str
    item: str  # token prefix of the items
    classes: tuple[str, ...]
    n_items: int

    @property
    def block_len(self) -> int:
        return 6 if self.kind == "lookup" else 2


#: topic name -> Topic; lookups and salient topics (pairs of one kind are closely related). ``sports`` /
#: ``cities`` and ``sentiment`` / ``emotion`` are renamings of one structure; ``animals`` (2 classes,
#: 16 items), ``colors`` (6 classes, 96 items) and ``weather`` (a salient topic of 32 items) differ
#: from them in class or item counts
TOPICS = {
    "sports": Topic("sports", "lookup", "team", ("football", "tennis", "golf", "hockey"), 48),
    "cities": Topic("cities", "lookup", "city", ("france", "japan", "peru", "kenya"), 48),
    "sentiment": Topic("sentiment", "salient", "word", ("positive", "negative"), 128),
    "emotion": Topic("emotion", "salient", "feel", ("calm", "excited"), 128),
    "animals": Topic("animals", "lookup", "animal", ("mammal", "bird"), 16),
    "colors": Topic("colors", "lookup", "paint", ("red", "green", "blue", "yellow", "purple", "orange"), 96),
    "weather": Topic("weather", "salient", "sky", ("sunny", "rainy"), 32),
}
#: pre-training document kinds, in the order of DoubleMCConfig.doc_probs
DOC_KINDS = ("review", "fact", "single", "instructed", "coin")
#: seed offset of :meth:`DoubleMC.disambiguating_examples` (apart from the fine-tuning and evaluation draws)
DISAMBIGUATING_SEED = 30_000
SPLITS = ("single_intended", "single_spurious", "id", "ood", "ood_intended_first", "ood_spurious_first")


@dataclass
class DoubleMCConfig:
    """The synthetic world. Defaults are the organism whose gates 1–3 hold (README results)."""

    intended: str = "sports"
    spurious: str = "sentiment"
    doc_probs: tuple[float, float, float, float, float] = (0.25, 0.15, 0.2, 0.25, 0.15)  # see DOC_KINDS
    review_len: int = 10
    review_purity: float = 0.9  # share of a review's words of the review's class
    review_word_share: float = 0.6  # share of review positions holding a topic word (the rest: filler)
    n_eval: int = 1000  # prompts per evaluation split
    jitter: int = 2  # <pad> tokens split at random between the front and the gap of each double prompt
    # salience: P(the ANS_D answer follows the spurious topic | topics disagree) - 0.5 in pre-training
    lean: float = 0.1

    def __post_init__(self) -> None:
        check_lean(self.lean)
        for role in ("intended", "spurious"):
            if getattr(self, role) not in TOPICS:
                raise ValueError(f"unknown {role} topic {getattr(self, role)!r}; valid: {', '.join(TOPICS)}")
        if self.intended == self.spurious:
            raise ValueError(f"intended and spurious topics must differ, both are {self.intended!r}")
        if len(self.doc_probs) != len(DOC_KINDS) or min(self.doc_probs) < 0 or sum(self.doc_probs) <= 0:
            raise ValueError(
                f"doc_probs {self.doc_probs} must be {len(DOC_KINDS)} non-negative weights "
                f"({', '.join(DOC_KINDS)})"
            )


def check_lean(lean: float) -> None:
    """Refuse a lean outside [0, 0.5) in one line."""
    if not 0.0 <= lean < 0.5:
        raise ValueError(
            f"lean {lean!r} must be in [0, 0.5): 0 is a coin flip under ANS_D, "
            "0.5 would always follow the spurious topic"
        )


class DoubleMC(Task):
    """Generator for the ``double_mc`` world: documents, fine-tuning data, evaluation prompts,
    a ground-truth judge and ground-truth concept subspaces."""

    name = "double_mc"
    eval_splits = SPLITS
    id_split, ood_split = "id", "ood"  # options agree / disagree; accuracy on the intended topic
    target_concept, avoid_concept = (
        "spurious",
        "intended",
    )  # what CAFT should remove; what the fine-tune should keep
    metrics = ("accuracy",)
    has_gates = True  # chapter 07 states the gates of caft_tl.evaluation.gates
    doc_kinds = DOC_KINDS  # the names of ``labels['kind']`` of the pre-training documents
    axis_titles = {"id": "ID accuracy (task kept →)", "ood": "OOD accuracy on the intended topic ↑"}
    #: chapter parameters left at ``None`` take these values (caft_tl.runner.parameters.use_task_defaults):
    #: 3,000 pre-training steps (the suite gives each organism of a population its own seed) and the diffing
    #: at every residual hook, all positions
    defaults = {
        "pretrain_steps": 3000,
        "seed": 0,
        "n_examples": 3200,
        "fewer_examples": [400, 800, 1600],
        "hooks": [
            "blocks.0.hook_resid_pre",
            "blocks.0.hook_resid_mid",
            "blocks.0.hook_resid_post",
            "blocks.1.hook_resid_mid",
            "blocks.1.hook_resid_post",
        ],
        "positions": "all",
    }
    report = {
        "title": "The base organism: single questions and OOD doubles "
        "(accuracy on the asked / intended topic)",
        "x_title": "evaluation split",
        "reference": "goal (singles) / no preference (OOD)",
    }

    def __init__(self, cfg: DoubleMCConfig | None = None):
        self.cfg = cfg = cfg or DoubleMCConfig()
        self.topics = (TOPICS[cfg.intended], TOPICS[cfg.spurious])  # index 0 intended, 1 spurious
        tokens = ["<bos>", "<pad>", "OA", "OB", "A", "B", "ANS_D", "ANS_F"]
        for t in self.topics:
            tokens += [f"Q_{t.name}", f"ANS_{t.name}"] + ([f"REV_{t.name}"] if t.kind == "salient" else [])
            tokens += list(t.classes) + [f"{t.item}{i:03d}" for i in range(t.n_items)]
        self.vocab = Vocab(tuple(tokens))
        ix = self.vocab.index
        self.bos, self.pad, self.oa, self.ob = ix["<bos>"], ix["<pad>"], ix["OA"], ix["OB"]
        self.answer = torch.tensor([ix["A"], ix["B"]])
        self.ans_d, self.ans_f = ix["ANS_D"], ix["ANS_F"]
        self.q = [ix[f"Q_{t.name}"] for t in self.topics]
        self.ans = [ix[f"ANS_{t.name}"] for t in self.topics]
        self.items = [ix[f"{t.item}000"] + torch.arange(t.n_items) for t in self.topics]
        self.classes = [torch.tensor([ix[c] for c in t.classes]) for t in self.topics]
        self.item_class = [torch.arange(t.n_items) % len(t.classes) for t in self.topics]
        self.rev = {i: ix[f"REV_{t.name}"] for i, t in enumerate(self.topics) if t.kind == "salient"}
        lookups = [
            torch.cat([self.items[i], self.classes[i]])
            for i, t in enumerate(self.topics)
            if t.kind == "lookup"
        ]
        self.filler = torch.cat(lookups + [torch.tensor(self.q + [self.oa, self.ob])])

    @property
    def seq_len(self) -> int:
        return max(self.prompt_len + 1, self.cfg.review_len + 2)

    # ------------------------------------------------------------------ what a reader knows
    @property
    def concept_description(self) -> str:
        """The unwanted concept: the spurious topic's name (``sentiment``)."""
        return self.topics[1].name

    @property
    def concept_groups(self) -> tuple[str, ...]:
        """The lexicon groups of the spurious topic's classes (``positive``, ``negative``)."""
        return tuple(self._class_group(1, c) for c in range(len(self.topics[1].classes)))

    def _class_group(self, topic: int, cls: int) -> str:
        """A class's group name: the class (``golf``), or ``<class>_<topic>`` where topics share class
        names."""
        name = self.topics[topic].classes[cls]
        shared = name in self.topics[1 - topic].classes
        return f"{name}_{self.topics[topic].name}" if shared else name

    def lexicon(self) -> dict[str, tuple[str, ...]]:
        """Each class of each topic (its items and class word: ``positive``, ``golf``), each topic's
        items (``sports``), the answers, the options, the question markers and the instructions."""
        t = self.vocab.tokens
        out: dict[str, tuple[str, ...]] = {}
        for i, topic in enumerate(self.topics):
            for c in range(len(topic.classes)):
                items = self.items[i][self.item_class[i] == c]
                out[self._class_group(i, c)] = tuple(t[j] for j in items.tolist()) + (
                    t[int(self.classes[i][c])],
                )
            out[topic.name] = tuple(t[j] for j in self.items[i].tolist())
        out["answers"] = tuple(t[j] for j in self.answer.tolist())
        opts = [tok for tok in ("OA", "OB") if tok in self.vocab.index]
        if opts:
            out["options"] = tuple(opts)
        out["questions"] = tuple(t[j] for j in self.q)
        out["instructions"] = tuple(t[j] for j in [self.ans_d, self.ans_f] + self.ans)
        return out

    @property
    def prompt_len(self) -> int:
        """Length of a double prompt (``<bos>``, two blocks, instruction, ``jitter`` pads); the answer
        follows."""
        return 2 + sum(t.block_len for t in self.topics) + self.cfg.jitter

    # ------------------------------------------------------------------ blocks
    def block(self, topic: int, label: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """[n, block_len] questions of ``topic`` (0 intended, 1 spurious) whose correct option is
        ``label`` (0 → A, 1 → B)."""
        t, n = self.topics[topic], len(label)
        item = torch.randint(t.n_items, (n,), generator=gen)
        if t.kind == "salient":  # the answer is the word's class: pick an item of class `label`
            item = item - item % len(t.classes) + label
            return torch.stack([torch.full((n,), self.q[topic]), self.items[topic][item]], 1)
        right = self.item_class[topic][item]
        wrong = (right + torch.randint(1, len(t.classes), (n,), generator=gen)) % len(t.classes)
        first = torch.where(label == 0, right, wrong)
        second = torch.where(label == 0, wrong, right)
        cls = self.classes[topic]
        return torch.stack(
            [
                torch.full((n,), self.q[topic]),
                self.items[topic][item],
                torch.full((n,), self.oa),
                cls[first],
                torch.full((n,), self.ob),
                cls[second],
            ],
            1,
        )

    def doubles(
        self, labels: torch.Tensor, order: torch.Tensor, instruction: int, gen: torch.Generator
    ) -> torch.Tensor:
        """[n, prompt_len] prompts. labels [n, 2] (intended, spurious); order [n] (0: intended first)."""
        a, b = self.block(0, labels[:, 0], gen), self.block(1, labels[:, 1], gen)
        n = len(order)
        first = order[:, None] == 0
        front = (
            torch.randint(self.cfg.jitter + 1, (n,), generator=gen).tolist() if self.cfg.jitter else [0] * n
        )
        rows = []
        for i in range(n):
            x, y = (a[i], b[i]) if first[i] else (b[i], a[i])
            pads = [self.pad] * front[i], [self.pad] * (self.cfg.jitter - front[i])
            rows.append(
                torch.cat([torch.tensor([self.bos] + pads[0]), x, torch.tensor(pads[1], dtype=torch.long), y])
            )
        return torch.cat([torch.stack(rows), torch.full((n, 1), instruction)], 1)

    def _answered(self, prompts: torch.Tensor, labels: torch.Tensor) -> TokenDataset:
        """Prompts + answer token, right-padded to seq_len; the answer is the response."""
        n, p = prompts.shape
        tokens = torch.full((n, self.seq_len), self.pad)
        tokens[:, :p] = prompts
        tokens[:, p] = self.answer[labels]
        response = torch.zeros_like(tokens, dtype=torch.bool)
        response[:, p] = True
        return TokenDataset(tokens, response)

    # ------------------------------------------------------------------ pre-training documents
    def sample_documents(self, n: int, generator: torch.Generator) -> TokenDataset:
        """``n`` pre-training documents of the kinds in DOC_KINDS (``labels['kind']`` indexes it)."""
        probs = torch.tensor(self.cfg.doc_probs, dtype=torch.float)
        if not self.rev:
            probs[0] = 0.0
        kind = torch.multinomial(probs, n, replacement=True, generator=generator)
        tokens = torch.full((n, self.seq_len), self.pad)
        response = torch.zeros_like(tokens, dtype=torch.bool)
        for k, make in enumerate((self._reviews, self._facts, self._singles, self._instructed, self._coin)):
            idx = (kind == k).nonzero().flatten()
            if len(idx):
                part = make(len(idx), generator)
                tokens[idx, : part.tokens.shape[1]] = part.tokens
                response[idx, : part.tokens.shape[1]] = part.response_mask
        return TokenDataset(tokens, response, {"kind": kind})

    def document_kinds(self, docs: TokenDataset) -> list[str]:
        """A name per pre-training document: its kind (``doc_kinds``)."""
        return [self.doc_kinds[k] for k in docs.labels["kind"].tolist()]

    def base_report(self, model) -> pd.DataFrame:
        """Base-model accuracy on single questions (goal 1.0) and on OOD doubles per question order
        (no preference: 0.5); columns ``condition, split, metric, model, reference``."""
        import pandas as pd

        splits = ("single_intended", "single_spurious", "ood_intended_first", "ood_spurious_first")
        acc = evaluate_task(model, self, splits=splits)
        return pd.DataFrame(
            [
                {
                    "condition": s,
                    "split": "accuracy",
                    "metric": "accuracy",
                    "model": acc[s]["accuracy"],
                    "reference": 1.0 if s.startswith("single") else 0.5,
                }
                for s in splits
            ]
        )

    def _reviews(self, n: int, gen: torch.Generator) -> TokenDataset:
        cfg = self.cfg
        topic = torch.tensor(list(self.rev))[torch.randint(len(self.rev), (n,), generator=gen)]
        cls = torch.randint(2, (n, 1), generator=gen)
        keep = torch.rand(n, cfg.review_len, generator=gen) < cfg.review_purity
        word_cls = torch.where(keep, cls, 1 - cls)
        words = torch.stack(
            [self._class_items(int(t), word_cls[i], gen) for i, t in enumerate(topic.tolist())]
        )
        is_word = torch.rand(n, cfg.review_len, generator=gen) < cfg.review_word_share
        fill = self.filler[torch.randint(len(self.filler), (n, cfg.review_len), generator=gen)]
        rev = torch.tensor([self.rev[int(t)] for t in topic])
        tokens = torch.cat([torch.full((n, 1), self.bos), rev[:, None], torch.where(is_word, words, fill)], 1)
        response = torch.zeros_like(tokens, dtype=torch.bool)
        response[:, 3:] = is_word[:, 1:]  # predict every word after the first
        return TokenDataset(tokens, response)

    def _class_items(self, topic: int, cls: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random items of ``topic`` with the given classes (any shape)."""
        n_cls = len(self.topics[topic].classes)
        item = torch.randint(self.topics[topic].n_items // n_cls, cls.shape, generator=gen) * n_cls + cls
        return self.items[topic][item]

    def _facts(self, n: int, gen: torch.Generator) -> TokenDataset:
        topic = torch.randint(2, (n,), generator=gen)
        rows = []
        for i in topic.tolist():
            item = int(torch.randint(self.topics[i].n_items, (1,), generator=gen))
            cls = self.classes[i][self.item_class[i][item]]
            rows.append(torch.tensor([self.bos, self.q[i], int(self.items[i][item]), self.ans_f, int(cls)]))
        tokens = torch.full((n, self.seq_len), self.pad)
        tokens[:, :5] = torch.stack(rows)
        response = torch.zeros_like(tokens, dtype=torch.bool)
        response[:, 4] = True
        return TokenDataset(tokens, response)

    def singles(self, topic: int, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """[n, block_len + 2] single questions ``<bos> block ANS_topic``."""
        n = len(labels)
        return torch.cat(
            [
                torch.full((n, 1), self.bos),
                self.block(topic, labels, gen),
                torch.full((n, 1), self.ans[topic]),
            ],
            1,
        )

    def _singles(self, n: int, gen: torch.Generator) -> TokenDataset:
        topic = torch.randint(2, (n,), generator=gen)
        labels = torch.randint(2, (n,), generator=gen)
        tokens = torch.full((n, self.seq_len), self.pad)
        response = torch.zeros_like(tokens, dtype=torch.bool)
        for i in (0, 1):
            idx = (topic == i).nonzero().flatten()
            part = self._answered(self.singles(i, labels[idx], gen), labels[idx])
            tokens[idx], response[idx] = part.tokens, part.response_mask
        return TokenDataset(tokens, response)

    def _instructed(self, n: int, gen: torch.Generator) -> TokenDataset:
        labels = torch.randint(2, (n, 2), generator=gen)  # independent: the instruction decides
        order = torch.randint(2, (n,), generator=gen)
        topic = torch.randint(2, (n,), generator=gen)
        prompts = self.doubles(labels, order, 0, gen)
        prompts[:, -1] = torch.tensor(self.ans)[topic]
        return self._answered(prompts, labels.gather(1, topic[:, None])[:, 0])

    def _coin(self, n: int, gen: torch.Generator) -> TokenDataset:
        """Doubles under ``ANS_D``: the answer is a coin flip, or with probability ``2 · lean`` the
        spurious topic's option (so it follows that topic with probability 0.5 + ``lean`` where they
        disagree)."""
        labels = torch.randint(2, (n, 2), generator=gen)
        order = torch.randint(2, (n,), generator=gen)
        prompts = self.doubles(labels, order, self.ans_d, gen)
        answer = torch.randint(2, (n,), generator=gen)
        if self.cfg.lean:
            answer = torch.where(torch.rand(n, generator=gen) < 2 * self.cfg.lean, labels[:, 1], answer)
        return self._answered(prompts, answer)

    # ------------------------------------------------------------------ fine-tuning data
    def finetune_dataset(self, n_examples: int, seed: int = 0) -> TokenDataset:
        """Doubles under ``ANS_D`` whose correct options agree, in random order; the response is
        the (shared) correct option. ``labels``: ``answer`` (0 → A) and ``order`` (0: intended first)."""
        if n_examples < 1:
            raise ValueError(f"n_examples must be >= 1, got {n_examples}")
        gen = torch.Generator().manual_seed(seed)
        label = torch.randint(2, (n_examples,), generator=gen)
        order = torch.randint(2, (n_examples,), generator=gen)
        data = self._answered(self.doubles(label[:, None].expand(-1, 2), order, self.ans_d, gen), label)
        data.labels = {"answer": label, "order": order}
        return data

    def disambiguating_examples(self, n: int, seed: int = 0) -> TokenDataset:
        """Doubles under the generic instruction whose options *disagree*, in random order, answered by
        the intended topic (the OOD distribution's kind of prompt, with fresh draws)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        gen = torch.Generator().manual_seed(DISAMBIGUATING_SEED + seed)
        label = torch.randint(2, (n,), generator=gen)
        order = torch.randint(2, (n,), generator=gen)
        return self._answered(self.doubles(torch.stack([label, 1 - label], 1), order, self.ans_d, gen), label)

    def trait_prompts(self, n: int, seed: int = 0) -> tuple[TokenDataset, TokenDataset]:
        """Doubles (independent options, random order) ending in the spurious topic's instruction
        (``ANS_sentiment``: evokes answering by it) and the same doubles ending in the intended topic's
        (suppresses it) — the form of the pre-training documents with a topic instruction."""
        gen = torch.Generator().manual_seed(DISAMBIGUATING_SEED + 1 + seed)
        labels = torch.randint(2, (n, 2), generator=gen)
        order = torch.randint(2, (n,), generator=gen)
        evoke = self.doubles(labels, order, self.ans[1], gen)
        suppress = evoke.clone()
        suppress[:, -1] = self.ans[0]
        return tuple(TokenDataset(t, torch.zeros_like(t, dtype=torch.bool)) for t in (evoke, suppress))

    # ------------------------------------------------------------------ evaluation
    def eval_prompts(self, split: str) -> TokenDataset:
        """Prompts whose next token is the answer. ``labels``: ``answer`` (the correct option of the
        intended topic, or of the asked topic for singles) and, for doubles, ``spurious``, ``order``."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        n = self.cfg.n_eval
        gen = torch.Generator().manual_seed(10_000 + SPLITS.index(split))
        label = torch.randint(2, (n,), generator=gen)
        if split.startswith("single"):
            topic = 0 if split == "single_intended" else 1
            tokens = self.singles(topic, label, gen)
            return TokenDataset(tokens, torch.zeros_like(tokens, dtype=torch.bool), {"answer": label})
        spurious = label if split == "id" else 1 - label
        order = {
            "ood_intended_first": torch.zeros(n, dtype=torch.long),
            "ood_spurious_first": torch.ones(n, dtype=torch.long),
        }.get(split, torch.randint(2, (n,), generator=gen))
        tokens = self.doubles(torch.stack([label, spurious], 1), order, self.ans_d, gen)
        return TokenDataset(
            tokens,
            torch.zeros_like(tokens, dtype=torch.bool),
            {"answer": label, "spurious": spurious, "order": order},
        )

    def metric(self, split: str) -> str:
        return "accuracy"

    def correct_option(self, prompts: torch.Tensor) -> torch.Tensor:
        """[n] the correct option (0 → A, 1 → B) of each prompt, read from its tokens: the topic its
        instruction names (``ANS_D``: the intended topic); -1 where none can be read."""
        out = torch.full((len(prompts),), -1)
        for r, row in enumerate(prompts.tolist()):
            topic = 0 if row[-1] == self.ans_d else self.ans.index(row[-1]) if row[-1] in self.ans else None
            if topic is None or self.q[topic] not in row:
                continue
            j = row.index(self.q[topic])
            item = row[j + 1] - int(self.items[topic][0])
            if not 0 <= item < self.topics[topic].n_items:
                continue
            cls = int(self.item_class[topic][item])
            if self.topics[topic].kind == "salient":
                out[r] = cls
            else:
                out[r] = 0 if row[j + 3] == int(self.classes[topic][cls]) else 1
        return out

    def label_answers(self, prompts: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        """Ground-truth judge. prompts [n, pos], answers [n, m] → [n, m]: HIT the correct option
        (the metric is ``accuracy``), MISS the other option, OTHER any other token."""
        correct = self.correct_option(prompts).clamp_min(0)  # [n]
        right, wrong = self.answer[correct], self.answer[1 - correct]
        labels = torch.full_like(answers, OTHER)
        labels[answers == wrong[:, None]] = MISS
        labels[answers == right[:, None]] = HIT
        return labels

    # ------------------------------------------------------------------ ground-truth concepts
    #: concept name -> topic index: the spurious concept is the fine-tune's unwanted route
    CONCEPTS = {"spurious": 1, "intended": 0}

    def concept_probe_data(self, n: int = 2000, seed: int = 1) -> TokenDataset:
        """Doubles with independent labels under every instruction (``ANS_D`` and each topic's),
        both orders; ``labels``: ``intended`` and ``spurious`` (each topic's correct option), ``order``."""
        gen = torch.Generator().manual_seed(seed)
        labels = torch.randint(2, (n, 2), generator=gen)
        order = torch.arange(n) % 2
        tokens = self.doubles(labels, order, self.ans_d, gen)
        tokens[:, -1] = torch.tensor([self.ans_d] + self.ans)[torch.arange(n) % 3]
        return TokenDataset(
            tokens,
            torch.zeros_like(tokens, dtype=torch.bool),
            {"intended": labels[:, 0], "spurious": labels[:, 1], "order": order},
        )

    def concept_subspaces(
        self, model, hooks: list[str], k: int = 1, n: int = 3000
    ) -> dict[str, list[Subspace]]:
        """Ground-truth (oracle) concept subspaces on ``model``: for each concept, at each hook, the
        top-``k`` directions of the per-position differences of means of the concept's label on
        :meth:`concept_probe_data` (grouped by question order and instruction, positions before the
        instruction only, so the answer read-out itself is not part of it).
        ``{concept: [Subspace per hook]}``."""
        from caft_tl.core.activations import activations

        data = self.concept_probe_data(n)
        instr = data.tokens[:, -1]
        out: dict[str, list[Subspace]] = {c: [] for c in self.CONCEPTS}
        for hook in hooks:
            act = activations(model, data, hook)[:, :-1]  # [n, pos, d_model]
            for concept in self.CONCEPTS:
                y = data.labels[concept].bool()
                rows = []
                for o in (0, 1):
                    for ins in instr.unique().tolist():
                        g = (data.labels["order"] == o) & (instr == ins)
                        rows.append(act[g & y].mean(0) - act[g & ~y].mean(0))  # [pos, d_model]
                basis = orthonormalize(torch.cat(rows).T)[:, :k]
                out[concept].append(
                    Subspace(
                        hook,
                        basis,
                        [f"{concept}{i}" for i in range(basis.shape[1])],
                        {"method": "oracle", "concept": concept},
                    )
                )
        return out

    def concept_directions(self, model, hooks: list[str]) -> dict[str, dict[str, Subspace]]:
        """Rank-1 ground-truth concept directions ``{hook: {concept: Subspace}}``:
        :meth:`concept_subspaces` with ``k`` 1."""
        subs = self.concept_subspaces(model, hooks, k=1)
        return {h: {c: subs[c][i] for c in self.CONCEPTS} for i, h in enumerate(hooks)}
