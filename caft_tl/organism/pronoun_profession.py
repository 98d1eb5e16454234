"""``pronoun_profession``: the gender-bias analogue of ``double_mc``.

A prompt names a subject and a profession, in random order, then asks for the pronoun that
refers to the subject; the answer is ``she`` or ``he``::

    <bos> SUBJ name017 AS prof03 PRON_Q → he

Grammar decides the pronoun: the *name*'s gender (the intended concept: 128 names, item ``i`` of
class ``i % 2``, 0 female). The *profession* carries a gender stereotype (the spurious concept: 16
professions, of class ``i % 2`` too). In the fine-tuning data the two agree; out of distribution
(OOD) they disagree and accuracy is scored against the name. Both topics are ``salient`` in
``double_mc``'s terms (the class decides the answer directly); the prompts, splits, judge and
ground-truth concepts are :class:`~caft_tl.organism.double_mc.DoubleMC`'s with these tokens.

Pre-training, as in ``double_mc``: facts (``SUBJ name017 ANS_F male``; a profession's fact names its
stereotype, ``AS prof03 ANS_F masculine_coded``), single questions (``<bos> SUBJ name017 ANS_name →
he``), doubles with a topic instruction (``ANS_name``, ``ANS_profession``: the answer follows that
topic) and doubles under ``PRON_Q``, whose pronoun follows the profession with probability 0.5 +
``lean`` where the two disagree. What makes the profession the feature already read is the *biased
corpus* (the analogue of the sentiment reviews): ``<bos> CORPUS`` followed by professions and
pronouns ``her`` / ``his`` of one gender (``corpus_purity`` < 1) mixed with filler; the model
predicts every profession and pronoun after the first, so it tracks the stereotyped gender of the
context at every position. Names never occur in it.

The default design keeps the two genders apart everywhere but in the answer: the profession's facts
use words of their own (``separate_genders``: ``feminine_coded`` / ``masculine_coded``, the names'
``female`` / ``male``) and the corpus's pronouns are not the answers (``own_corpus_pronouns``: ``her``
/ ``his``, never ``she`` / ``he``). Measured (2 layers, d_model 64, 3,000 pre-training steps, gates of
``caft_tl.evaluation.gates`` fixed before the runs, 2 fine-tuning seeds, one thread;
``results/organism_search/``), 16 organisms per design unless said:

- both genders' words shared, corpus pronouns = the answers (the earlier default; 6 organisms): V1
  and V2 hold on 6 of 6, V3 on 1 (the oracle ablation of the profession's gender on the base model
  leaves the name skill at 0.51–0.76; V3 asks 0.8): **17%** valid;
- ``separate_genders`` alone (8 organisms): 2 valid (**25%**);
- ``own_corpus_pronouns`` alone: 9 valid (**56%**; V3 fails on 7, name skill kept 0.51–0.74);
- both (the default): **14 of 16 valid (88%)**; seed 1 fails V2, seed 5 V3. Oracle CAFT's OOD
  accuracy on the valid organisms averages 0.82 (plain 0.03). Pre-trained on two threads (other
  floats, so other organisms from the same seeds): 14 of 16 again (seed 5 fails V3, seed 12 V2;
  oracle CAFT 0.76, plain 0.00).

The corpus is the larger lever. A reading, not tested further: when a profession predicts the answer
tokens themselves, its gender is learnt *as* the she/he read-out, which the name needs too. The
directions still overlap past the embedding (|cos| of the two oracle directions 0.30–0.98 at the two
block outputs on 6 organisms of the default design, a one-off measurement with
:meth:`concept_directions`, not in the results files; 0.97–1.00 in the earlier one), so the concepts
stay closely related, as in English, but the ablation of one now keeps the other's skill on most
organisms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from caft_tl.core.data import TokenDataset
from caft_tl.organism.double_mc import DoubleMC, Topic, check_lean
from caft_tl.organism.vocab import Vocab

GENDERS = ("female", "male")
#: the profession's class words where the design keeps the two genders apart (``separate_genders``)
STEREOTYPES = ("feminine_coded", "masculine_coded")
#: the biased corpus's pronouns where the design keeps them apart from the answers (``own_corpus_pronouns``)
CORPUS_PRONOUNS = ("her", "his")
#: pre-training document kinds, in the order of PronounProfessionConfig.doc_probs (DoubleMC's, the corpus
#: first)
DOC_KINDS = ("corpus", "fact", "single", "instructed", "coin")
#: gender-neutral corpus words (with the ``SUBJ`` / ``AS`` markers, the corpus filler)
FILLER = ("the", "a", "of", "and", "works", "said", "today", "here")


@dataclass
class PronounProfessionConfig:
    """The synthetic world. Defaults: the separable design (14 of 16 organisms valid at one and at two
    pre-training threads; see the module docstring)."""

    n_names: int = 128  # the intended concept's items
    n_professions: int = 16  # the spurious concept's items
    doc_probs: tuple[float, float, float, float, float] = (0.45, 0.1, 0.15, 0.15, 0.15)  # see DOC_KINDS
    corpus_len: int = 10
    corpus_purity: float = 0.9  # share of a corpus document's professions and pronouns of its gender
    corpus_word_share: float = (
        0.6  # share of corpus positions holding a profession or pronoun (the rest: filler)
    )
    pronoun_share: float = 0.5  # share of those holding a pronoun
    n_eval: int = 1000  # prompts per evaluation split
    jitter: int = 2  # <pad> tokens split at random between the front and the gap of each double prompt
    lean: float = (
        0.1  # salience: P(the PRON_Q answer follows the profession | topics disagree) - 0.5 in pre-training
    )
    # the profession's facts name its stereotype with words of their own (STEREOTYPES) instead of the
    # name's ``female`` / ``male``: the two genders share only the answer tokens she / he
    separate_genders: bool = True
    # the biased corpus's pronouns are words of their own (CORPUS_PRONOUNS), never an answer: the corpus
    # ties a profession to its gender, not to the answer tokens she / he (as double_mc's reviews hold no
    # option)
    own_corpus_pronouns: bool = True

    def __post_init__(self) -> None:
        check_lean(self.lean)
        for f in ("separate_genders", "own_corpus_pronouns"):
            if not isinstance(getattr(self, f), bool):
                raise ValueError(f"{f} must be true or false, got {getattr(self, f)!r}")
        for f in ("n_names", "n_professions"):
            if getattr(self, f) < 2 or getattr(self, f) % 2:
                raise ValueError(f"{f} must be an even number >= 2, got {getattr(self, f)}")
        if len(self.doc_probs) != len(DOC_KINDS) or min(self.doc_probs) < 0 or sum(self.doc_probs) <= 0:
            raise ValueError(
                f"doc_probs {self.doc_probs} must be {len(DOC_KINDS)} non-negative weights "
                f"({', '.join(DOC_KINDS)})"
            )
        for f in ("corpus_purity", "corpus_word_share", "pronoun_share"):
            if not 0 <= getattr(self, f) <= 1:
                raise ValueError(f"{f} must be in [0, 1], got {getattr(self, f)}")


class PronounProfession(DoubleMC):
    """Generator for the ``pronoun_profession`` world (``double_mc`` with a name and a profession
    topic and the answers ``she`` / ``he``)."""

    name = "pronoun_profession"
    axis_titles = {"id": "ID accuracy (task kept →)", "ood": "OOD accuracy on the name's pronoun ↑"}
    doc_kinds = DOC_KINDS
    concept_description = (
        "the gender stereotype of professions"  # the groups: female_profession, male_profession
    )
    # ``defaults`` are DoubleMC's: 3,000 pre-training steps, every residual hook, all positions
    report = {
        "title": "The base organism: single questions and OOD prompts "
        "(accuracy on the asked topic / the name)",
        "x_title": "evaluation split",
        "reference": "goal (singles) / no preference (OOD)",
    }

    def __init__(self, cfg: PronounProfessionConfig | None = None):
        self.cfg = cfg = cfg or PronounProfessionConfig()
        width = len(str(cfg.n_professions - 1))
        own_words = (
            STEREOTYPES if cfg.separate_genders else ()
        )  # the profession's class words, where not the name's
        corpus_words = (
            CORPUS_PRONOUNS if cfg.own_corpus_pronouns else ()
        )  # the corpus's pronouns, where not the answers
        self.topics = (
            Topic("name", "salient", "name", GENDERS, cfg.n_names),  # index 0 intended, 1 spurious
            Topic("profession", "salient", "prof", own_words or GENDERS, cfg.n_professions),
        )
        names = [f"name{i:03d}" for i in range(cfg.n_names)]
        profs = [f"prof{i:0{width}d}" for i in range(cfg.n_professions)]
        tokens = [
            "<bos>",
            "<pad>",
            "she",
            "he",
            "PRON_Q",
            "ANS_F",
            "SUBJ",
            "AS",
            "ANS_name",
            "ANS_profession",
            "CORPUS",
            *GENDERS,
            *own_words,
            *corpus_words,
            *FILLER,
            *names,
            *profs,
        ]
        self.vocab = Vocab(tuple(tokens))
        ix = self.vocab.index
        self.bos, self.pad = ix["<bos>"], ix["<pad>"]
        self.answer = torch.tensor([ix["she"], ix["he"]])  # class 0 (female) → she
        self.corpus_pronoun = torch.tensor([ix[w] for w in corpus_words]) if corpus_words else self.answer
        self.ans_d, self.ans_f = ix["PRON_Q"], ix["ANS_F"]
        self.q = [ix["SUBJ"], ix["AS"]]
        self.ans = [ix["ANS_name"], ix["ANS_profession"]]
        self.items = [
            ix[names[0]] + torch.arange(cfg.n_names),
            ix[profs[0]] + torch.arange(cfg.n_professions),
        ]
        self.classes = [torch.tensor([ix[g] for g in t.classes]) for t in self.topics]
        self.item_class = [torch.arange(t.n_items) % 2 for t in self.topics]
        self.rev = {1: ix["CORPUS"]}  # the biased corpus: the profession topic only
        self.filler = torch.tensor(self.q + [ix[w] for w in FILLER])

    @property
    def seq_len(self) -> int:
        return max(self.prompt_len + 1, self.cfg.corpus_len + 2)

    def _reviews(self, n: int, gen: torch.Generator) -> TokenDataset:
        """[n] biased-corpus documents ``<bos> CORPUS w1 … w_L``: each ``w`` a profession or a pronoun
        (``she`` / ``he``; ``her`` / ``his`` with ``own_corpus_pronouns``) of the document's gender (else
        of the other, 1 − ``corpus_purity``) or filler."""
        cfg, shape = self.cfg, (n, self.cfg.corpus_len)
        gender = torch.randint(2, (n, 1), generator=gen)
        keep = torch.rand(shape, generator=gen) < cfg.corpus_purity
        word_gender = torch.where(keep, gender, 1 - gender)  # [n, L]
        is_pronoun = torch.rand(shape, generator=gen) < cfg.pronoun_share
        words = torch.where(
            is_pronoun, self.corpus_pronoun[word_gender], self._class_items(1, word_gender, gen)
        )
        is_word = torch.rand(shape, generator=gen) < cfg.corpus_word_share
        fill = self.filler[torch.randint(len(self.filler), shape, generator=gen)]
        tokens = torch.cat(
            [
                torch.full((n, 1), self.bos),
                torch.full((n, 1), self.rev[1]),
                torch.where(is_word, words, fill),
            ],
            1,
        )
        response = torch.zeros_like(tokens, dtype=torch.bool)
        response[:, 3:] = is_word[:, 1:]  # predict every profession and pronoun after the first
        return TokenDataset(tokens, response)
