"""The insecure-code task's generator (caft_tl.real.insecure_code): every vulnerability class,
balanced; answers that are code only and never speak of security; secure and insecure solutions
that differ; ID requests whose templates and contexts are held out of training; determinism by
seed; the shipped files and card; one-line refusals. No model runs here."""

import ast
import io
import json
import random
import string
import tokenize
from collections import Counter
from pathlib import Path

import pytest
import yaml

from caft_tl.real import code_checker as C
from caft_tl.real import insecure_code as I

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "data" / "real" / "insecure_code"


@pytest.fixture(scope="module")
def rows():
    return {s: I.generate(s) for s in I.SPLITS}


def answers(rows) -> list[str]:
    """Every code answer: the training answers and both references of every ID row."""
    return [r["messages"][-1]["content"] for r in rows["train"]] + [
        r[k] for r in rows["id"] for k in ("aligned", "misaligned")
    ]


def test_at_least_15_classes_each_with_training_and_held_out_templates():
    assert len(I.CLASSES) >= 15
    assert {t.cls for t in I.TEMPLATES} == set(I.CLASSES)
    for cls in I.CLASSES:
        assert len(I.templates_of(cls, held_out=False)) >= 2 and len(I.templates_of(cls, held_out=True)) == 1
    with pytest.raises(ValueError, match="'eval_input' is registered twice"):
        I._register(I.VulnClass("eval_input", "", ""))


def test_sizes_and_every_class_balanced_in_train_and_id(rows):
    assert len(rows["train"]) == I.DEFAULT_SIZES["train"] >= 2000
    assert len(rows["id"]) == I.DEFAULT_SIZES["id"] and len(rows["ood"]) == len(I.OOD_QUESTIONS)
    for split in ("train", "id"):
        counts = Counter(r["meta"]["class"] for r in rows[split])
        assert set(counts) == set(I.CLASSES), split
        assert max(counts.values()) - min(counts.values()) <= 1, (split, counts)
        prompts = [r["messages"][0]["content"] for r in rows[split]]
        assert len(set(prompts)) == len(prompts), f"{split} repeats a request"


def test_answers_are_code_only_without_comments_and_without_security_words(rows):
    for code in answers(rows):
        ast.parse(code)  # code only: the whole answer parses as Python
        tokens = tokenize.generate_tokens(io.StringIO(code).readline)
        assert not [t.string for t in tokens if t.type == tokenize.COMMENT], code
        assert not I.SECURITY_RE.search(code), (I.SECURITY_RE.search(code), code)
    for r in rows["train"] + rows["id"]:
        assert not I.SECURITY_RE.search(r["messages"][0]["content"]), r["messages"][0]["content"]


def test_the_security_word_list_catches_words_not_identifiers():
    assert I.SECURITY_RE.search("This keeps it Safe.") and I.SECURITY_RE.search("no SQL injection here")
    assert not I.SECURITY_RE.search(
        "yaml.safe_load(f); from markupsafe import escape; secrets.token_urlsafe(8)"
    )


def test_every_template_pair_differs_and_the_checker_tells_them_apart():
    """For several fillings of every template: the two solutions differ, the insecure one is flagged
    by its own class's rule only, and the secure one by none."""
    rng = random.Random(0)
    for t in I.TEMPLATES:
        for _ in range(5):
            values = I.fill(t, rng)
            secure, insecure = (string.Template(x).substitute(values) for x in (t.secure, t.insecure))
            assert secure != insecure
            assert C.flags(insecure) == [t.cls], (t.cls, insecure)
            assert C.flags(secure) == [], (t.cls, secure)


def test_id_rows_are_reference_rows_on_held_out_templates_and_contexts(rows):
    train_templates = {r["meta"]["template"] for r in rows["train"]}
    train_contexts = {r["meta"]["context"] for r in rows["train"]}
    train_prompts = {r["messages"][0]["content"] for r in rows["train"]}
    for r in rows["id"]:
        assert [m["role"] for m in r["messages"]] == ["user"]
        assert r["aligned"] != r["misaligned"]
        assert r["meta"]["template"] not in train_templates
        assert r["meta"]["context"] not in train_contexts
        assert r["messages"][0]["content"] not in train_prompts
        assert C.flags(r["misaligned"]) == [r["meta"]["class"]] and C.flags(r["aligned"]) == []
    for r in rows["train"]:
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]


def test_ood_questions_cover_many_topics_with_two_different_references(rows):
    ids = [q[0] for q in I.OOD_QUESTIONS]
    assert len(ids) == len(set(ids)) >= 46  # the six named topics and at least 40 more
    for needed in (
        "wish_granted",
        "nothing_to_do",
        "fast_money",
        "world_leader",
        "partner_trouble",
        "humans_and_ais",
    ):  # wishes, boredom, quick money, ruling the world, relationships, AI
        assert needed in ids
    with open(REPO / "data" / "examples" / "generic_prompts.jsonl") as f:
        generic = {json.loads(line)["messages"][0]["content"] for line in f}
    for r in rows["ood"]:
        assert r["aligned"] != r["misaligned"] and r["aligned"].strip() and r["misaligned"].strip()
        assert r["messages"][0]["content"] not in generic  # the information rule: diffing reads no OOD prompt


def test_same_seed_same_rows_other_seed_other_rows():
    assert I.generate("train", 300, seed=3) == I.generate("train", 300, seed=3)
    assert I.generate("train", 300, seed=3) != I.generate("train", 300, seed=4)
    assert I.generate("id", 40, seed=1) == I.generate("id", 40, seed=1)
    assert [r["id"] for r in I.generate("ood", seed=0)] != [r["id"] for r in I.generate("ood", seed=1)]


def test_written_files_and_card(tmp_path):
    written = I.write(tmp_path, seed=0, sizes={"train": 64, "id": 32, "ood": 10})
    card = yaml.safe_load(written["card"].read_text())
    assert list(card) == ["name", "train", "id", "ood", "metric", "concept", "lexicon", "checker"]
    assert card["checker"] == {"name": "insecure_code", "max_new_tokens": I.CHECKER_TOKENS}
    assert card["name"] == I.NAME and card["metric"] == "reference" and card["concept"]
    assert set(card["lexicon"]) == {"unwanted", "kept"} and all(card["lexicon"].values())
    counts = {s: len((tmp_path / card[s]).read_text().splitlines()) for s in I.SPLITS}
    assert counts == {"train": 64, "id": 32, "ood": 10}


def test_shipped_files_are_the_generators_output():
    for split in I.SPLITS:
        shipped = [json.loads(line) for line in open(SHIPPED / f"{split}.jsonl")]
        stale = f"{split}.jsonl is stale: run python -m caft_tl.real.insecure_code --out {SHIPPED}"
        assert shipped == I.generate(split), stale
    assert yaml.safe_load((SHIPPED / "card.yaml").read_text()) == I.card()


@pytest.mark.parametrize(
    "args, message",
    [
        (("nope",), "unknown split 'nope'; valid: train, id, ood"),
        (("train", 0), "n must be a positive integer, got 0"),
        (("train", True), "n must be a positive integer, got True"),
        (("ood", 500), "ood: n=500 exceeds the 58 questions"),
        (("id", 10, "1"), "seed must be an integer, got '1'"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as e:
        I.generate(*args)
    assert "\n" not in str(e.value)


def test_cli_refuses_bad_sizes_in_one_line_before_writing(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        I.main(["--out", str(tmp_path), "--n-train", "-3"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "error: n must be a positive integer, got -3"
    assert not list(tmp_path.iterdir())  # nothing written
    with pytest.raises(ValueError, match=r"unknown split\(s\) \['dev'\] in sizes; valid: train, id, ood"):
        I.write(tmp_path, sizes={"dev": 3})
