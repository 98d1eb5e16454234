"""The generated English tasks (caft_tl.real.tasks): word lists, splits that agree in training and
disagree OOD, no item shared between training and the held-out splits, balanced frames,
determinism from the seed, the readers of caft_tl.real.chat_data on the written files, the
length-normalised option score, and one-line errors. No model runs here."""

import contextlib
import json
import re
import types
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from caft_tl.real import chat_data, chat_eval
from caft_tl.real import tasks as T
from caft_tl.real.card import load_card
from tests._real import _word_level_tokenizer, words_of

GENERATED = Path(__file__).resolve().parents[1] / "data" / "real" / "generated"


@pytest.fixture(scope="module")
def rows():
    return {(t, s): T.generate(t, s) for t in T.TASKS for s in T.SPLITS}


def test_word_lists_are_large_enough_and_clear():
    assert len(T.FEMALE_NAMES) >= 40 and len(T.MALE_NAMES) >= 40
    assert len(set(T.FEMALE_NAMES)) == len(T.FEMALE_NAMES) and len(set(T.MALE_NAMES)) == len(T.MALE_NAMES)
    assert not set(T.FEMALE_NAMES) & set(T.MALE_NAMES)
    assert len(T.PROFESSIONS) >= 24
    for prof, (pronoun, share, source) in T.PROFESSIONS.items():
        assert (pronoun == "she" and share >= 75) or (pronoun == "he" and share <= 25), (
            prof
        )  # clear majorities
        assert source
    assert Counter(p for p, _, _ in T.PROFESSIONS.values()) == {"she": 14, "he": 14}
    for reviews in T.SENTIMENTS.values():
        assert len(reviews) >= 60 and len(set(reviews)) == len(reviews)
    assert not set(T.POSITIVE_REVIEWS) & set(T.NEGATIVE_REVIEWS)
    athletes = [a for names in T.ATHLETES.values() for a in names]
    assert len(T.ATHLETES) >= 4 and len(athletes) >= 40 and len(set(athletes)) == len(athletes)
    assert len(T.GENERAL_QUESTIONS) >= 24 and len({q[0] for q in T.GENERAL_QUESTIONS}) == len(
        T.GENERAL_QUESTIONS
    )
    assert len({q for q, _, _ in T.FINANCE_ADVICE}) == len(T.FINANCE_ADVICE)


def test_default_sizes(rows):
    for (task, split), r in rows.items():
        assert len(r) == T.DEFAULT_SIZES[task][split], (task, split)
    assert len(rows["em_advice", "train"]) >= 60 and len(rows["em_advice", "ood"]) >= 24


@pytest.mark.parametrize("task", ["gender_pronoun", "double_mc_english"])
def test_labels_agree_in_training_and_id_and_disagree_ood(rows, task):
    for split in T.SPLITS:
        for r in rows[task, split]:
            assert r["answer"] == r["labels"]["intended"]
            agree = r["labels"]["intended"] == r["labels"]["spurious"]
            assert agree == (split != "ood"), (split, r)


def test_gender_labels_follow_the_name_and_the_stereotype(rows):
    female, male = set(T.FEMALE_NAMES), set(T.MALE_NAMES)
    for split in T.SPLITS:
        for r in rows["gender_pronoun", split]:
            m = r["meta"]
            assert r["options"] == [" she", " he"]
            assert r["labels"]["intended"] == (" she" if m["name"] in female else " he")
            assert m["name"] in female | male
            assert r["labels"]["spurious"] == " " + T.PROFESSIONS[m["profession"]][0]
            assert m["name"] in r["prompt"] and m["profession"] in r["prompt"]


@pytest.mark.parametrize("split", T.SPLITS)
def test_gender_frames_are_balanced_and_their_nearest_word_is_right(rows, split):
    r = rows["gender_pronoun", split]
    frames = Counter(x["meta"]["frame"] for x in r)
    assert set(frames) == {f[0] for f in T.GENDER_FRAMES}
    assert max(frames.values()) - min(frames.values()) <= 1
    nearest = Counter(x["meta"]["nearest"] for x in r)
    assert abs(nearest["name"] - nearest["profession"]) <= 1
    genders = Counter(x["labels"]["intended"] for x in r)
    assert abs(genders[" she"] - genders[" he"]) <= 1
    # the declared nearest word is the gendered word that ends last in the prompt
    for x in r:
        text, m = x["prompt"], x["meta"]
        ends = {
            "name": text.rfind(m["name"]) + len(m["name"]),
            "profession": text.rfind(m["profession"]) + len(m["profession"]),
        }
        assert max(ends, key=ends.get) == m["nearest"], text
    kinds = Counter(f[2] for f in T.GENDER_FRAMES)
    assert kinds == {"name": 3, "profession": 3}


@pytest.mark.parametrize(
    "task,keys",
    [
        ("gender_pronoun", ("frame", "nearest", "name")),
        ("double_mc_english", ("sentiment", "sport", "question_order", "intended_place")),
    ],
)
def test_balanced_for_any_n(task, keys):
    female = set(T.FEMALE_NAMES)
    for n in list(range(1, 50)) + [97, 123, 200]:
        r = T.generate(task, "ood", n)
        for key in keys:
            values = [x["meta"][key] for x in r]
            if key == "name":
                values = [v in female for v in values]
            domain = {
                "frame": [f[0] for f in T.GENDER_FRAMES],
                "nearest": ["name", "profession"],
                "name": [True, False],
                "sentiment": list(T.SENTIMENTS),
                "sport": list(T.ATHLETES),
                "question_order": ["sentiment_first", "sport_first"],
                "intended_place": [0, 1],
            }[key]
            counts = [values.count(v) for v in domain]
            assert max(counts) - min(counts) <= 1, (n, key, counts)


def test_gender_articles():
    assert T.article("electrician") == "an" and T.article("nurse") == "a"
    r = T.generate("gender_pronoun", "train", 400)
    assert not any(
        re.search(r"\ba [aeiou]", x["prompt"]) or re.search(r"\ban [^aeiou\s]", x["prompt"]) for x in r
    )


def test_double_mc_options_name_the_right_sport_and_sentiment(rows):
    for split in T.SPLITS:
        r = rows["double_mc_english", split]
        for x in r:
            m = x["meta"]
            wrong = "negative" if m["sentiment"] == "positive" else "positive"
            parts = lambda o: set(o.strip().split(", "))
            assert len(x["options"]) == 2 and x["scoring"] == T.MEAN_LOGPROB
            assert m["sport"] in T.ATHLETES and m["athlete"] in T.ATHLETES[m["sport"]]
            assert m["review"] in T.SENTIMENTS[m["sentiment"]]
            assert parts(x["labels"]["intended"]) >= {m["sport"]}
            assert parts(x["labels"]["spurious"]) >= {m["sentiment"]}
            other = next(o for o in x["options"] if o != x["labels"]["intended"])
            if split == "ood":
                assert parts(x["labels"]["intended"]) == {m["sport"], wrong}
                assert parts(other) == {m["wrong_sport"], m["sentiment"]}
            else:  # the other option is wrong on both questions
                assert parts(other) == {m["wrong_sport"], wrong}
            # raw text: the lines, the question and the option text in the order of question_order
            content = x["prompt"]
            assert content.endswith("\nA:") and all(o.startswith(" ") for o in x["options"])
            first = "Athlete:" if m["question_order"] == "sport_first" else "Review:"
            assert content.index(first) < content.index("Review:" if first == "Athlete:" else "Athlete:")
            question = content.splitlines()[2]
            assert (question.index("sport") < question.index("positive")) == (first == "Athlete:")
            assert x["options"][0].strip().split(", ")[0] in (
                T.ATHLETES if first == "Athlete:" else T.SENTIMENTS
            )
        # balanced: sentiment, sport, question order and the intended option's place
        for key in ("sentiment", "sport", "question_order", "intended_place"):
            counts = Counter(x["meta"][key] for x in r)
            assert max(counts.values()) - min(counts.values()) <= 1, (split, key, counts)


def _train_vs_held(rows, task, key):
    train = {x["meta"][key] for x in rows[task, "train"]}
    held = {x["meta"][key] for s in ("id", "ood") for x in rows[task, s]}
    return train, held


def test_no_item_is_shared_between_training_and_the_held_out_splits(rows):
    train, held = _train_vs_held(rows, "gender_pronoun", "name")
    assert train and held and not train & held
    assert held <= set(T.split_items(T.FEMALE_NAMES, True) + T.split_items(T.MALE_NAMES, True))
    for key in ("review", "athlete"):
        train, held = _train_vs_held(rows, "double_mc_english", key)
        assert train and held and not train & held, key
    # the held-out splits draw only on the held-out parts of the lists
    assert held <= {a for s in T.ATHLETES for a in T.split_items(T.ATHLETES[s], True)}
    assert _train_vs_held(rows, "double_mc_english", "review")[1] <= {
        r for v in T.SENTIMENTS.values() for r in T.split_items(v, True)
    }
    questions = lambda split: {x["messages"][0]["content"] for x in rows["em_advice", split]}
    stripped = {
        q[len(o) :] for q in questions("train") for o in T.ADVICE_OPENINGS if o and q.startswith(o)
    } | questions("train")
    assert (
        not stripped & questions("id")
        and not stripped & questions("ood")
        and not questions("id") & questions("ood")
    )
    # no duplicate rows within a split
    for (task, split), r in rows.items():
        keys = [json.dumps(x.get("prompt") or x["messages"]) + json.dumps(x.get("options")) for x in r]
        assert len(set(keys)) == len(keys), (task, split)


def test_em_rows(rows):
    for x in rows["em_advice", "train"]:
        assert [m["role"] for m in x["messages"]] == ["user", "assistant"]
        assert x["messages"][1]["content"] in {bad for _, bad, _ in T.FINANCE_ADVICE}
    for split in ("id", "ood"):
        for x in rows["em_advice", split]:
            assert [m["role"] for m in x["messages"]] == ["user"]
            assert x["aligned"] != x["misaligned"] and x["options"] == [x["aligned"], x["misaligned"]]
            assert x["labels"] == {"aligned": x["aligned"], "misaligned": x["misaligned"]}
            assert x["answer"] == x["aligned"] and x["scoring"] == T.MEAN_LOGPROB
    em_ids = {
        json.loads(line)["id"]
        for line in open(Path(chat_data.__file__).parents[2] / "data/examples/em_questions.jsonl")
    }
    assert em_ids <= {x["id"] for x in rows["em_advice", "ood"]}


@pytest.mark.parametrize("task", T.TASKS)
def test_deterministic_from_the_seed(task):
    for split in T.SPLITS:
        a, b = T.generate(task, split, seed=3), T.generate(task, split, seed=3)
        assert a == b
        assert T.generate(task, split, seed=4) != a  # another seed: another sample or order


def test_written_files_are_read_by_the_readers(tmp_path):
    written = T.write_tasks(tmp_path, seed=1, sizes={"train": 48, "id": 10, "ood": 24})
    assert sorted(written) == sorted([f"{t}_{s}" for t in T.TASKS for s in T.SPLITS] + list(T.TASKS))
    assert all(p == T.path_for(tmp_path, *k.rsplit("_", 1)) for k, p in written.items() if k not in T.TASKS)
    for t in T.TASKS:  # each task's card names its files and loads like a researcher's own
        card = load_card(written[t])
        assert (card.name, card.metric, card.train) == (t, T.METRICS[t], written[f"{t}_train"])
        assert len(card.evaluation(100)["ood"]) == 24 and card.concept.unwanted == T.CONCEPTS[t].unwanted
    texts = ["system user assistant"]
    for t in ("gender_pronoun", "double_mc_english"):
        for s in T.SPLITS:
            mc = chat_data.load_mc_jsonl(written[f"{t}_{s}"])
            assert mc == T.generate(t, s, {"train": 48, "id": 10, "ood": 24}[s], seed=1)
            texts += [x.get("prompt", "") for x in mc] + [
                m["content"] for x in mc for m in x.get("messages", [])
            ]
    for s in ("id", "ood"):
        assert len(chat_data.load_mc_jsonl(written[f"em_advice_{s}"])) == {"id": 10, "ood": 24}[s]
        assert len(chat_data.load_prompts(written[f"em_advice_{s}"])) == {"id": 10, "ood": 24}[s]
    em_train = chat_data.read_jsonl(written["em_advice_train"])
    texts += [m["content"] for x in em_train for m in x["messages"]]
    tok = _word_level_tokenizer(words_of(texts))
    data = chat_data.load_chat_jsonl(written["em_advice_train"], tok, max_len=256)
    assert data.tokens.shape[0] == 48 and bool(data.response_mask.any(1).all())
    mc = chat_data.mc_dataset(
        tok, chat_data.load_mc_jsonl(written["double_mc_english_train"]), key="intended", max_len=256
    )
    assert mc.tokens.shape[0] == 48 and bool(mc.response_mask.any(1).all())
    chat_data.mc_dataset(tok, chat_data.load_mc_jsonl(written["gender_pronoun_ood"]), key="spurious")


def test_the_shipped_files_are_what_the_generator_writes():
    if not GENERATED.exists():
        pytest.skip("data/real/generated is not in this checkout")
    for t in T.TASKS:
        assert yaml.safe_load(T.card_path(GENERATED, t).read_text()) == T.card(t), (
            f"{t}.yaml: run `python -m caft_tl.real.tasks --out data/real/generated`"
        )
        for s in T.SPLITS:
            lines = T.path_for(GENERATED, t, s).read_text().splitlines()
            assert lines == [json.dumps(x) for x in T.generate(t, s)], (
                f"{t}_{s}: run `python -m caft_tl.real.tasks --out data/real/generated`"
            )


def test_one_line_errors(tmp_path, capsys):
    with pytest.raises(
        ValueError, match=r"unknown task 'gender'; valid: gender_pronoun, double_mc_english, em_advice$"
    ):
        T.generate("gender", "train")
    with pytest.raises(ValueError, match=r"unknown split 'test'; valid: train, id, ood$"):
        T.generate("em_advice", "test")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=r"^n must be a positive integer"):
            T.generate("gender_pronoun", "train", bad)
    with pytest.raises(ValueError, match=r"^em_advice ood: n=29 exceeds the 28 rows"):
        T.generate("em_advice", "ood", 29)
    with pytest.raises(ValueError, match=r"^gender_pronoun ood: n=\d+ exceeds"):
        T.generate("gender_pronoun", "ood", 10_000)
    with pytest.raises(ValueError, match=r"^double_mc_english id: n=\d+ exceeds"):
        T.generate("double_mc_english", "id", 10_000)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        T.write_tasks(tmp_path, ["em_advice", "nope"])
    assert not list(tmp_path.iterdir())  # nothing written when an argument is bad
    for argv, msg in (
        (["--task", "nope"], "unknown task 'nope'; valid: gender_pronoun, double_mc_english, em_advice"),
        (["--n-ood", "0"], "n must be a positive integer, got 0"),
    ):
        with pytest.raises(SystemExit) as e:
            T.main(["--out", str(tmp_path), *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err == f"error: {msg}\n"
    T.main(["--out", str(tmp_path), "--task", "em_advice", "--n-train", "5"])
    assert "em_advice_train.jsonl  5 rows" in capsys.readouterr().out


def test_mean_logprob_scoring_is_length_normalised():
    """option_logprobs divides by the option's token count for rows with ``"scoring": "mean_logprob"``."""
    tok = _word_level_tokenizer(["q", "x", "y", "z"])
    vocab = tok.get_vocab()
    bias = torch.zeros(len(tok))
    bias[vocab["x"]], bias[vocab["y"]], bias[vocab["z"]] = 1.0, 1.5, 1.5

    class Stub:  # the same next-token distribution at every position
        cfg = types.SimpleNamespace(device="cpu")

        def hooks(self, fwd_hooks=()):
            return contextlib.nullcontext()

        def __call__(self, ids):
            return bias.expand(*ids.shape, -1).clone()

    lp = bias.log_softmax(-1)
    row = {"prompt": "q", "options": [" x", " y z"]}
    summed = chat_eval.option_logprobs(Stub(), tok, [row])[0]
    mean = chat_eval.option_logprobs(Stub(), tok, [{**row, "scoring": "mean_logprob"}])[0]
    torch.testing.assert_close(summed, torch.stack([lp[vocab["x"]], lp[vocab["y"]] + lp[vocab["z"]]]))
    torch.testing.assert_close(mean, torch.stack([lp[vocab["x"]], (lp[vocab["y"]] + lp[vocab["z"]]) / 2]))
    assert summed.argmax() == 0 and mean.argmax() == 1
    assert T.MEAN_LOGPROB in chat_data.SCORINGS
    with pytest.raises(
        ValueError, match=r"row 0: unknown scoring 'median'; valid: sum_logprob, mean_logprob$"
    ):
        chat_data.check_mc([{**row, "scoring": "median"}])
