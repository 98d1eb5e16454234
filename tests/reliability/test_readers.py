"""Every reader of user or run data checks every row: one line naming the file (and line) and what is
expected, nothing dropped silently — the cases of issue 38, then a hypothesis fuzz of each reader."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caft_tl.core import files, results
from caft_tl.real import chat_data
from caft_tl.runner import sweep
from tests._real import _word_level_tokenizer

WORDS = ["hi", "hello", "there", "what", "is", "your", "wish", "A", "B"]
CHAT = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}
] * 3
MC = [
    {
        "prompt": "what is",
        "options": [" A", " B"],
        "answer": " A",
        "labels": {"intended": " A", "spurious": " B"},
    }
] * 3
PROMPTS = [
    {"id": "wish", "messages": [{"role": "user", "content": "what is your wish"}]},
    {"prompt": "hi there"},
]
RESULT_ROW = "persona_em,persona_em-s0-abc123,plain,none,,True,0,ood,accuracy,0.25\n"


@pytest.fixture(scope="module")
def tok():
    return _word_level_tokenizer(WORDS)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _one_line(excinfo, *parts) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert str(p) in msg, (p, msg)
    return msg


def test_a_chat_row_without_an_assistant_turn_is_refused_not_dropped(tmp_path, tok):
    rows = [*CHAT[:2], {"messages": [{"role": "user", "content": "hi"}]}]
    f = _jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(ValueError) as e:
        chat_data.load_chat_jsonl(f, tok)
    assert _one_line(e, f"{f}:3: ").endswith("a chat row needs an assistant message to train on")
    assert len(chat_data.load_chat_jsonl(_jsonl(tmp_path / "ok.jsonl", CHAT), tok)) == 3


def test_truncated_chat_rows_are_skipped_with_a_count_or_refused(tmp_path, tok):
    long = {
        "messages": [
            {"role": "user", "content": " ".join(["what"] * 30)},
            {"role": "assistant", "content": "hi"},
        ]
    }
    f = _jsonl(tmp_path / "chat.jsonl", [*CHAT[:2], long])
    with pytest.warns(UserWarning, match=rf"skipped 1 of 3 conversations .*max_len=12 \(first: {f}:3\)"):
        assert len(chat_data.load_chat_jsonl(f, tok, max_len=12)) == 2
    with pytest.raises(ValueError) as e:
        chat_data.load_chat_jsonl(f, tok, max_len=12, skip_truncated=False)
    _one_line(e, f"{f}:3: no assistant token within max_len=12")


def test_invalid_utf8_names_file_line_and_byte(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(json.dumps(PROMPTS[0]).encode() + b"\n" + b'{"prompt": "caf\xff"}\n')
    with pytest.raises(ValueError) as e:
        chat_data.load_prompts(f)
    _one_line(e, f"{f}:2: not UTF-8 text (byte 0xff at column 16)")


@pytest.mark.parametrize(
    "line, expected",
    [
        ("[1, 2]", "a JSON array, not an object"),
        ('"text"', "a JSON string, not an object"),
        ('{"prompt": NaN}', "not JSON (NaN is not a number JSON allows"),
        ('{"prompt": 3}', "'prompt' = 3; expected non-empty text"),
        ('{"prompt": "x", "id": [1]}', "'id' = [1]; expected a string or an integer"),
        ('{"messages": "hi"}', "'messages' must be a non-empty list"),
    ],
)
def test_prompt_rows_are_typed(tmp_path, line, expected):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps(PROMPTS[1]) + "\n\n" + line + "\n")
    with pytest.raises(ValueError) as e:
        chat_data.load_prompts(f)
    _one_line(e, f"{f}:3: ", expected)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"answer": 1}, "'answer' = 1; expected one of the options"),
        ({"options": [" A", " A"]}, "expected a list of at least two distinct non-empty strings"),
        ({"options": [" A", 2]}, "expected a list of at least two distinct non-empty strings"),
        ({"labels": [" A"]}, "'labels' = [' A']; expected an object"),
        ({"labels": {"intended": " C"}}, "intended ' C' is not one of the options"),
        ({"scoring": "median"}, "unknown scoring 'median'; valid: sum_logprob, mean_logprob"),
    ],
)
def test_mc_rows_are_typed(tmp_path, change, expected):
    f = _jsonl(tmp_path / "mc.jsonl", [MC[0], {**MC[0], **change}])
    with pytest.raises(ValueError) as e:
        chat_data.load_mc_jsonl(f)
    _one_line(e, f"{f}:2: ", expected)


def test_mc_dataset_names_a_missing_label(tok):
    with pytest.raises(ValueError) as e:
        chat_data.mc_dataset(tok, MC, key="misaligned")
    _one_line(e, "row 0: no option under labels['misaligned']")


def test_a_tokenizer_without_a_chat_template_is_named_by_its_folder(tmp_path):
    plain = _word_level_tokenizer(WORDS)
    plain.chat_template = None
    plain.save_pretrained(tmp_path / "base-model")
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "base-model"))
    with pytest.raises(ValueError) as e:
        chat_data.render(loaded, CHAT[0]["messages"])
    msg = _one_line(e, f"the tokenizer of {str(tmp_path / 'base-model')!r} has no chat template")
    assert type(loaded).__name__ not in msg


# ---------------------------------------------------------------------- results.csv


def _results(path, *lines):
    path.write_text(",".join(results.COLUMNS) + "\n" + "".join(lines))
    return path


@pytest.mark.parametrize(
    "line, expected",
    [
        (RESULT_ROW.replace("0.25", "abc"), "value = 'abc'; expected a number"),
        (RESULT_ROW.replace(",0.25", ""), "9 fields, expected 10"),
        (RESULT_ROW.replace("0.25", "0.25,x"), "11 fields, expected 10"),
        (RESULT_ROW.replace("0.25", "inf"), "value = 'inf'; expected a finite number"),
        (RESULT_ROW.replace("0.25", ""), "value = ''; expected a number"),
        (RESULT_ROW.replace("True", "yes"), "trained = 'yes'; expected True or False"),
        (RESULT_ROW.replace(",0,", ",0.5,"), "seed = '0.5'; expected an integer"),
    ],
)
def test_results_rows_are_checked(tmp_path, line, expected):
    f = _results(tmp_path / "results.csv", RESULT_ROW, line)
    for reader in (results.read, lambda p: results.append(p, [])):
        with pytest.raises(ValueError) as e:
            reader(f)
        _one_line(e, f"{f}:3: ", expected)


def test_results_read_types_and_keeps_nan(tmp_path):
    undefined = RESULT_ROW.replace("ood", "id").replace("0.25", "nan")
    df = results.read(_results(tmp_path / "results.csv", RESULT_ROW, undefined))
    assert df["value"].dtype == float and df["seed"].dtype == int and df["trained"].dtype == bool
    assert df["value"].iloc[0] == 0.25 and df["value"].isna().tolist() == [False, True]
    results.write(tmp_path / "again.csv", df)  # nan written as nan, read back the same
    assert results.read(tmp_path / "again.csv").equals(df)


# ---------------------------------------------------------------------- sweep files


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"a: {lr: 1\n", "not valid YAML"),
        (b"a: {lr: 0.001}\n\xff\n", "not UTF-8 text"),
    ],
)
def test_sweep_file_errors_name_the_file(tmp_path, content, expected):
    f = tmp_path / "s.yaml"
    f.write_bytes(content)
    with pytest.raises(ValueError) as e:
        sweep.load(f)
    _one_line(e, f, expected)


def test_sweep_table_rows_are_checked(tmp_path):
    table = tmp_path / "results.csv"
    table.write_text("run," + ",".join(results.COLUMNS) + "\n" + "a," + RESULT_ROW.replace(",0.25", ""))
    with pytest.raises(ValueError) as e:
        sweep._append_rows(table, "b", [])
    _one_line(e, f"{table}:2: ", "10 fields, expected 11")


# ---------------------------------------------------------------------- fuzz

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def corruptions(data: bytes):
    """Truncation, random bytes written over or inserted, or a line dropped / doubled / joined."""
    pos = st.integers(0, len(data))
    return st.one_of(
        pos.map(lambda i: data[:i]),
        st.tuples(pos, st.binary(min_size=1, max_size=4)).map(
            lambda t: data[: t[0]] + t[1] + data[t[0] + len(t[1]) :]
        ),
        st.tuples(pos, st.binary(min_size=1, max_size=4)).map(lambda t: data[: t[0]] + t[1] + data[t[0] :]),
        st.tuples(pos, st.sampled_from([b",", b'"', b"\n", b"{", b"}", b"x,", b": 1"])).map(
            lambda t: data[: t[0]] + t[1] + data[t[0] :]
        ),
    )


def field_changes(rows: list[dict]):
    """A row with one field removed, retyped or added."""
    values = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=5),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )

    def change(args):
        i, key, new, how = args
        row = dict(rows[i % len(rows)])
        keys = sorted(row)
        key = keys[key % len(keys)] if how != "add" else f"extra{key}"
        if how == "drop":
            row.pop(key)
        else:
            row[key] = new
        return [*rows[: i % len(rows)], row, *rows[i % len(rows) + 1 :]]

    hows = st.sampled_from(["drop", "retype", "add"])
    return st.tuples(st.integers(0, 9), st.integers(0, 9), values, hows).map(change)


def _refused_in_one_line_or_equal(read, path, count_lines):
    """``read(path)`` raises ValueError / FileNotFoundError in one line naming ``path``, or returns
    ``count_lines(path)`` rows: never a traceback of another type, never a silently dropped row."""
    try:
        out = read(path)
    except (ValueError, FileNotFoundError) as e:
        assert "\n" not in str(e) and str(path) in str(e), str(e)
        return None
    assert len(out) == count_lines(path)
    return out


def _json_lines(path) -> int:
    return sum(1 for line in path.read_bytes().split(b"\n") if line.strip(b" \t\r\n"))


@FUZZ
@given(st.data())
def test_fuzz_jsonl_readers(tmp_path_factory, tok, data):
    kind = data.draw(st.sampled_from(["chat", "mc", "prompts"]))
    rows = {"chat": CHAT, "mc": MC, "prompts": PROMPTS}[kind]
    rows = data.draw(st.one_of(st.just(rows), field_changes(rows)))
    blob = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path = tmp_path_factory.mktemp("fuzz") / f"{kind}.jsonl"
    path.write_bytes(data.draw(st.one_of(st.just(blob), corruptions(blob))))
    read = {
        "chat": lambda p: chat_data.load_chat_jsonl(p, tok),
        "mc": chat_data.load_mc_jsonl,
        "prompts": chat_data.load_prompts,
    }[kind]
    out = _refused_in_one_line_or_equal(read, path, _json_lines)
    if out is not None and kind == "mc":
        assert all(r["answer"] in r["options"] for r in out)


@FUZZ
@given(st.data())
def test_fuzz_results_read(tmp_path_factory, data):
    lines = [RESULT_ROW, RESULT_ROW.replace("ood", "id").replace("0.25", "0.5")]
    blob = (",".join(results.COLUMNS) + "\n" + "".join(lines)).encode()
    path = tmp_path_factory.mktemp("fuzz") / "results.csv"
    path.write_bytes(data.draw(corruptions(blob)))

    def rows(p):  # what a CSV reader sees: only \r and \n end a line (not \v or \x1c as str.splitlines says)
        import csv

        with open(p, newline="", encoding="utf-8") as f:
            return sum(1 for r in list(csv.reader(f))[1:] if r)

    df = _refused_in_one_line_or_equal(results.read, path, rows)
    if df is not None:  # what survived is still numbers: never strings in the value column
        assert df["value"].dtype == float and df["seed"].dtype == int and df["trained"].dtype == bool


@FUZZ
@given(st.data())
def test_fuzz_json_artefacts(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "run.json"
    files.write_json(path, {"steps": 3, "lr": 0.001})
    path.write_bytes(data.draw(corruptions(path.read_bytes())))
    try:
        files.read_json(path)
    except ValueError as e:
        assert "\n" not in str(e) and str(path) in str(e)


@FUZZ
@given(st.data())
def test_fuzz_sweep_files(tmp_path_factory, data):
    blob = b"chapters: ['00']\nfast: true\nsmall: {pretrain_steps: 10}\n"
    path = tmp_path_factory.mktemp("fuzz") / "s.yaml"
    path.write_bytes(data.draw(corruptions(blob)))
    try:
        sweep.load(path)
    except (ValueError, TypeError) as e:
        assert "\n" not in str(e) and str(path) in str(e), str(e)


# ---------------------------------------------------------------------- imported directions


@pytest.mark.parametrize(
    "config, npy, expected",
    [
        ('{"path": "P", "dict": {"1": "all"}', None, "not valid JSON"),
        ("[1]", None, "a JSON array; expected {'path'"),
        ('{"path": "P", "dict": {"one": "all"}}', None, "layer 'one' is not a layer index"),
        ('{"path": "P", "dict": {"1": "all"}, "n_pcs": 0}', None, "n_pcs = 0; expected a positive integer"),
        ('{"path": "P", "dict": {"2": "all"}}', None, "no PC file"),
        ('{"path": "P", "dict": {"1": "all"}}', b"\x93NUMPY garbage", "not a .npy array"),
        ('{"path": "P", "dict": {"1": "all"}}', "nan", "expected finite PCs as rows [n_pcs, d_model]"),
    ],
)
def test_caft_pc_files_are_checked(tmp_path, config, npy, expected):
    import numpy as np

    from caft_tl.directions import imported

    pcs = np.eye(4, 16, dtype=np.float32)
    if npy == "nan":
        pcs[0, 0] = np.nan
    np.save(tmp_path / "P1.npy", pcs)
    if isinstance(npy, bytes):
        (tmp_path / "P1.npy").write_bytes(npy)
    f = tmp_path / "iv.json"
    f.write_text(config.replace('"P"', json.dumps(str(tmp_path / "P"))))
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        imported.caft_pcs(f)
    msg = _one_line(e, expected)
    assert str(tmp_path) in msg


def test_a_bad_persona_vectors_file_names_it(tmp_path):
    from caft_tl.directions import imported

    f = tmp_path / "pv.pt"
    f.write_bytes(b"not a torch file")
    with pytest.raises(ValueError) as e:
        imported.persona_vectors(f, [0], n_layers=2)
    _one_line(e, f"cannot read {str(f)!r}: not a torch.save tensor")


def test_generated_tables_and_captions_name_the_file(tmp_path):
    from caft_tl.evaluation import population_analyses
    from caft_tl.plotting import results_page

    table = tmp_path / "population_summary.csv"
    table.write_bytes(b"a,b\n1,2\n\xff\xfe,3\n")
    with pytest.raises(ValueError) as e:
        files.read_csv(table)
    _one_line(e, f"cannot read {str(table)!r}: ")
    table.write_text("method,n_organisms,mean\nzero,two,0.5\n")
    with pytest.raises(ValueError) as e:
        population_analyses.read_summary(table)
    _one_line(e, f"cannot read {str(table)!r}: column 'n_organisms' holds a non-number")
    captions = tmp_path / "figs" / "persona_em" / "seed0" / "captions.json"
    captions.parent.mkdir(parents=True)
    captions.write_text('["not", "a mapping"]')
    with pytest.raises(ValueError) as e:
        results_page._figures(tmp_path / "figs", tmp_path / "runs", "persona_em", "seed0", tmp_path)
    _one_line(e, f"cannot read {str(captions)!r}: expected an object")


@FUZZ
@given(st.data())
def test_fuzz_tensors_in_a_run_directory_never_load_a_different_number(tmp_path_factory, data):
    import torch

    run = files.mark_run_dir(tmp_path_factory.mktemp("run"))
    path = run / "subspaces" / "pca.safetensors"
    original = {"0.basis": torch.arange(12, dtype=torch.float32).reshape(4, 3)}
    files.write_tensors(path, original)
    path.write_bytes(data.draw(corruptions(path.read_bytes())))
    try:
        loaded = files.read_tensors(path)
    except ValueError as e:
        assert "\n" not in str(e) and str(path) in str(e), str(e)
    else:
        assert loaded.keys() == original.keys() and torch.equal(loaded["0.basis"], original["0.basis"])
