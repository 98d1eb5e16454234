"""`make study`'s recipe: every topic pair it runs is a valid ``double_mc`` design, each into its own
folders."""

from __future__ import annotations

import ast
import shlex
import subprocess
from pathlib import Path

import pytest

from caft_tl.organism import make_task
from caft_tl.runner import suite

ROOT = Path(__file__).resolve().parents[1]


def _suite_calls(*make_args: str) -> list[list[str]]:
    out = subprocess.run(
        ["make", "-n", "--no-print-directory", "study", *make_args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    calls = []
    for part in (
        out.replace("\\\n", " ").replace("&&", "\n").splitlines()
    ):  # one suite call per recipe line or && part
        words = shlex.split(part)
        if "caft_tl.runner.suite" in words:
            calls.append(words[words.index("caft_tl.runner.suite") + 1 :])
    return calls


def _option(call: list[str], name: str) -> str:
    return call[call.index(name) + 1]


def test_the_study_runs_the_tasks_then_each_topic_pair_as_a_valid_design():
    calls = _suite_calls()
    assert _option(calls[0], "--run-dir") == "runs/study"
    given = {calls[0][i + 1]: ast.literal_eval(calls[0][i + 2]) for i, w in enumerate(calls[0]) if w == "-p"}
    assert given == {"n_rounds": 3, "lengths": [1, 2, 4]}  # chapter 10's study budget
    suite.check_parameters(given, suite.chapters())  # parameters a chapter declares, well typed
    pairs = calls[1:]
    assert len(pairs) >= 4  # the breadth: at least 4 topic pairs besides the default
    folders = set()
    for call in pairs:
        assert call[call.index("-p") + 1] == "task_cfg" and _option(call, "--tasks") == "double_mc"
        cfg = ast.literal_eval(call[call.index("-p") + 2])
        task = make_task("double_mc", cfg)  # an unknown topic raises here
        assert (task.cfg.intended, task.cfg.spurious) == (cfg["intended"], cfg["spurious"])
        assert _option(call, "--run-dir") == f"runs/study_pairs/{cfg['intended']}-{cfg['spurious']}"
        folders.add(_option(call, "--fig-dir"))
    assert len(folders) == len(pairs)


def test_a_study_pair_is_named_intended_colon_spurious():
    (call,) = _suite_calls("STUDY_PAIRS=colors:cities")[1:]
    assert ast.literal_eval(call[call.index("-p") + 2]) == {"intended": "colors", "spurious": "cities"}
    with pytest.raises(ValueError, match="unknown intended topic 'nope'"):
        bad = _suite_calls("STUDY_PAIRS=nope:cities")[1]
        make_task("double_mc", ast.literal_eval(bad[bad.index("-p") + 2]))
