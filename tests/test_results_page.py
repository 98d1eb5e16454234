"""The results page (``fig_dir/index.html``): every figure with its caption, the population tables
and links to the executed notebooks, all relative (offline from ``file://``), captions escaped —
built here from a tiny synthetic run; the slow test opens it in headless Chromium."""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser
from urllib.parse import unquote

import pandas as pd
import plotly.graph_objects as go
import pytest

from caft_tl.evaluation import population
from caft_tl.plotting import results_page
from caft_tl.plotting.figures import save_figure
from caft_tl.runner import lab_check

EVIL = "Rates <script>alert('x')</script> & more"
#: task -> organism folder -> {figure name: caption}
FIGURES = {
    "persona_em": {
        "seed0": {"01_plain_finetune": "Plain fine-tuning, 95% CI over seeds.", "05_caft": EVIL},
        "seed1": {"01_plain_finetune": "Plain fine-tuning of the second organism."},
    },
    "double_mc": {"seed0": {"05_caft": "CAFT on double_mc."}},
}


def _summary_rows(task: str, splits: dict[str, str]) -> list[dict]:
    rows = []
    for method, directions, value in [
        ("plain", "none", 0.76),
        ("zero", "pca", 0.41),
        ("zero", "random/3", 0.7),
    ]:
        for split, metric in splits.items():
            rows.append(
                {
                    "task": task,
                    "method": method,
                    "directions": directions,
                    "param": "",
                    "trained": True,
                    "split": split,
                    "metric": metric,
                    "mean": value,
                    "low": value - 0.1,
                    "high": value + 0.1,
                    "n_organisms": 2,
                    "within_organism_seed_sd": 0.01,
                }
            )
    return rows


@pytest.fixture
def run(tmp_path):
    """A synthetic run: figures with captions, population files and executed notebooks."""
    fig_dir, run_dir = tmp_path / "figures", tmp_path / "runs"
    for task, organisms in FIGURES.items():
        for folder, figs in organisms.items():
            for name, caption in figs.items():
                save_figure(
                    go.Figure(go.Bar(x=["a", "b"], y=[0.2, 0.7])),
                    name,
                    caption,
                    fig_dir / task / folder,
                    formats="",
                )
            nb = run_dir / task / folder / "notebooks" / "00_organism.ipynb"
            nb.parent.mkdir(parents=True)
            nb.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    pd.DataFrame(
        {
            "organism": ["persona_em-s0-aaaaaa", "persona_em-s1-bbbbbb"],
            "pretrain_seed": [0, 1],
            "valid": [True, True],
        }
    ).to_csv(fig_dir / "persona_em" / population.VALIDITY_FILE, index=False)
    pd.DataFrame(
        _summary_rows("persona_em", {"code_heldout": "insecure_rate", "chat": "misalignment_rate"})
    ).to_csv(fig_dir / "persona_em" / population.SUMMARY_FILE, index=False)
    pd.DataFrame(
        {
            "organism": ["double_mc-s0-cccccc"],
            "pretrain_seed": [0],
            "V1_base": [True],
            "V2_plain_learns_spurious": [False],
            "valid": [False],
        }
    ).to_csv(fig_dir / "double_mc" / population.VALIDITY_FILE, index=False)
    pd.DataFrame(
        columns=list(_summary_rows("double_mc", {"id": "accuracy"})[0])
    ).to_csv(  # no valid organism: no rows
        fig_dir / "double_mc" / population.SUMMARY_FILE, index=False
    )
    return fig_dir, run_dir


class _Page(HTMLParser):
    """Every link and frame of the page, its ids, and the text of its captions and table cells."""

    def __init__(self):
        super().__init__()
        self.refs, self.ids, self.frames, self.captions, self.cells, self.headers, self._in = (
            [],
            set(),
            [],
            [],
            [],
            [],
            None,
        )

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.ids.add(a.get("id"))
        for key in ("href", "src"):
            if a.get(key):
                self.refs.append(a[key])
        if tag == "iframe":
            self.frames.append(a["src"])
        if tag in ("figcaption", "td", "th"):
            self._in = tag
            {"figcaption": self.captions, "td": self.cells, "th": self.headers}[tag].append("")

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in:
            {"figcaption": self.captions, "td": self.cells, "th": self.headers}[self._in][-1] += data


def test_the_page_shows_every_figure_with_its_caption_the_tables_and_resolving_links(run):
    fig_dir, run_dir = run
    page = results_page.write(fig_dir, run_dir)
    assert page == (fig_dir / "index.html").resolve()
    text = page.read_text(encoding="utf-8")
    parsed = _Page()
    parsed.feed(text)
    # every figure, in an iframe, with its caption (the <script> caption escaped, shown as text)
    expected = {
        f"{t}/{o}/{n}.html": c
        for t, orgs in FIGURES.items()
        for o, figs in orgs.items()
        for n, c in figs.items()
    }
    assert sorted(unquote(f) for f in parsed.frames) == sorted(expected)
    assert sorted(parsed.captions) == sorted(expected.values())
    assert "<script" not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    # every link resolves: files (and folders) relative to the page, anchors to ids on it;
    # nothing from the network
    for ref in parsed.refs:
        assert not re.match(r"[a-z]+://", ref), ref
        if ref.startswith("#"):
            assert ref[1:] in parsed.ids, ref
        else:
            assert (page.parent / unquote(ref)).exists(), ref
    assert any(unquote(r).endswith("runs/persona_em/seed0/notebooks/00_organism.ipynb") for r in parsed.refs)
    # tables: organisms with their gates, CAFT vs baselines on the ID and OOD splits,
    # the null's draws left out
    assert {"V1_base", "V2_plain_learns_spurious", "valid"} <= set(parsed.headers)
    assert {"persona_em-s0-aaaaaa", "persona_em-s1-bbbbbb", "double_mc-s0-cccccc"} <= set(parsed.cells)
    assert any(h.startswith("code_heldout (insecure_rate) — ID") for h in parsed.headers)
    assert any(h.startswith("chat (misalignment_rate) — OOD") for h in parsed.headers)
    assert {"plain", "zero · pca", "0.76 [0.66, 0.86]", "0.41 [0.31, 0.51]"} <= set(parsed.cells)
    assert "zero · random/3" not in parsed.cells
    assert "No valid organism: no CAFT comparison." in text  # double_mc's empty summary
    for task in FIGURES:  # a heading and a contents entry per task
        assert f"<h2>{task}</h2>" in text and f'href="#{task}"' in text


@pytest.mark.skipif(
    lab_check.chromium() is None,
    reason="no Chromium for the browser check (Debian: apt-get install chromium)",
)
def test_the_page_renders_every_figure_in_a_browser_without_script_errors(run, tmp_path):
    """Headless Chromium from ``file://``: each figure draws a plotly plot, no page logs a script or load
    error; a screenshot of the page goes under ``tmp_path`` (its path printed, ``-s``)."""
    fig_dir, run_dir = run
    page = results_page.write(fig_dir, run_dir)
    parsed = _Page()
    parsed.feed(page.read_text(encoding="utf-8"))

    def chromium(url: str, *args: str) -> tuple[str, list[str]]:
        cmd = [
            lab_check.chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=1400,3000",
            "--virtual-time-budget=5000",
            "--enable-logging=stderr",
            "--v=0",
            *args,
            url,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        problems = [
            line
            for line in out.stderr.splitlines()
            if "CONSOLE" in line and re.search(r"Uncaught|Error|Failed to load", line)
        ]
        return out.stdout, problems

    screenshot = tmp_path / "results_page.png"
    _, problems = chromium(
        page.as_uri(), f"--screenshot={screenshot}"
    )  # the open organisms' iframes load here too
    assert not problems, problems
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
    assert parsed.frames
    for src in parsed.frames:
        dom, problems = chromium((page.parent / unquote(src)).as_uri(), "--dump-dom")
        assert len(lab_check.FIGURE_MARK.findall(dom)) == 1, f"{src} drew no plotly figure"
        assert not problems, (src, problems)
    print(f"screenshot: {screenshot}")


def test_the_page_shows_the_population_analyses_and_what_a_valid_organism_lacks(run):
    from caft_tl.evaluation import population_analyses as pa

    fig_dir, run_dir = run
    rows = pd.DataFrame(
        {
            "method": ["zero", "zero"],
            "directions": ["pca", "pca"],
            "param": ["", ""],
            "organism": ["a", "b"],
            "excess": [0.2, 0.3],
            "reduction_factor": [2.0, 3.0],
        }
    )
    pa.reduction_factors(rows).to_csv(fig_dir / "persona_em" / pa.REDUCTION_SUMMARY_FILE, index=False)
    pd.DataFrame(
        {
            "file": [pa.CURVE_FILE, pa.CURVE_FILE],
            "organism": ["persona_em-s0-aaaaaa", "persona_em-s1-bbbbbb"],
            "status": [pa.READ, pa.MISSING],
        }
    ).to_csv(fig_dir / "persona_em" / pa.COVERAGE_FILE, index=False)
    parsed = _Page()
    text = results_page.write(fig_dir, run_dir).read_text(encoding="utf-8")
    parsed.feed(text)
    assert (
        'id="persona_em-analyses"' in text and 'id="double_mc-analyses"' not in text
    )  # only where a file exists
    assert results_page.ANALYSES[pa.REDUCTION_SUMMARY_FILE] in text
    assert {"zero", "pca", "2.50", "2"} <= set(parsed.cells) and {"mean", "n_infinite", "excess_mean"} <= set(
        parsed.headers
    )
    assert f"{pa.CURVE_FILE}: missing for 1 of 2 valid organisms (persona_em-s1-bbbbbb)" in text


def test_the_page_leads_with_the_population_figures_then_the_tables_then_each_organism(run):
    from caft_tl.plotting import figures, population_figures

    fig_dir, run_dir = run
    caption = figures.Caption(
        "CAFT over the population.",
        "2 valid organisms of 2",
        "95% t-interval over organisms",
        "results.csv",
        "abc",
    )
    for name in reversed(population_figures.NAMES[:2]):  # saved out of order: the page keeps NAMES' order
        save_figure(go.Figure(go.Scatter(x=[0], y=[1])), name, caption, fig_dir / "persona_em", formats="")
    text = results_page.write(fig_dir, run_dir).read_text(encoding="utf-8")
    parsed = _Page()
    parsed.feed(text)
    places = [
        text.index(f'id="persona_em-{part}"') for part in ("population", "organisms", "comparison", "figures")
    ]
    assert places == sorted(places)
    frames = [unquote(f) for f in parsed.frames]
    # the first figures on the page
    assert frames[:2] == [f"persona_em/{n}.html" for n in population_figures.NAMES[:2]]
    assert str(caption) in parsed.captions
    assert any(unquote(r) == f"persona_em/{population_figures.NAMES[0]}.caption.md" for r in parsed.refs)
    assert 'href="#persona_em-population"' in text
    # double_mc has none: a note says so
    assert text.index('id="double_mc-population"') < text.index("No population figures")
