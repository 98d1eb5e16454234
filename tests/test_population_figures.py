"""Population figures rebuilt from a small hand-made results.csv: their values, interval ends and n
are the rows' (checked against a t-interval computed here), invalid organisms stay out, the label
rule holds, and each figure has its caption file; the palette refuses duplicates."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import scipy.stats

from caft_tl.core import results
from caft_tl.evaluation import population
from caft_tl.plotting import figures, palette, population_figures

TASK = "double_mc"
#: (method, directions, param) of the trained configurations, each with its own ID and OOD level
CONFIGS = [
    ("plain", "none", ""),
    ("fewer_examples", "none", "n=96"),
    ("fewer_examples", "none", "n=160"),
    ("zero", "pca", ""),
    ("zero", "topk_pca", ""),
    ("zero", "random", ""),
    ("zero", "random/0", ""),
    ("zero", "sae", ""),
    ("zero", "oracle", ""),
    ("kl_to_base", "none", "beta=1.0"),
    ("detached", "pca", ""),
    ("grad_only", "pca", ""),
    ("mean", "pca", ""),
    ("steer_mean", "pca", "k=-3"),
    ("steer_mean", "pca", "k=3"),
    ("add", "pca", "alpha=4.0"),
    ("filter_projection", "pca", "drop=5%"),
    ("filter_projection", "pca", "drop=10%"),
    ("filter_projection", "pca", "drop=25%"),
]
VALID, INVALID = [f"{TASK}-s{o}-abcdef" for o in range(3)], f"{TASK}-s3-abcdef"


def ood(i: int, o: int, seed: int) -> float:
    """The OOD accuracy of the i-th configuration on organism o, fine-tuning seed ``seed``."""
    return 0.1 + 0.04 * i + 0.02 * o + 0.01 * o * o + 0.01 * seed


def idv(i: int, o: int) -> float:
    return 0.95 - 0.01 * i + 0.01 * o


def _rows(organisms: list[str]) -> list[dict]:
    rows = []
    for org in organisms:
        o = int(org.split("-s")[1].split("-")[0])
        wild = 0.5 if org == INVALID else 0.0  # the invalid organism is far off: it must not move any number
        rows += results.rows(
            results.RowKey(TASK, org, "base", trained=False),
            {"id": {"accuracy": 0.9}, "ood": {"accuracy": 0.5 - wild}},
        )
        for i, (m, d, p) in enumerate(CONFIGS):
            for seed in (0, 1):
                rows += results.rows(
                    results.RowKey(TASK, org, m, d, p, True, seed),
                    {
                        "id": {"accuracy": idv(i, o) - wild},
                        "ood": {"accuracy": min(ood(i, o, seed) + wild, 1.0)},
                    },
                )
        for d, precision in (("pca", 0.8), ("topk_pca", 0.5), ("sae", 0.6)):
            rows += results.rows(
                results.RowKey(TASK, org, "interpretation", d, trained=False),
                {
                    "all": {
                        "precision": precision + 0.05 * o,
                        "recall": 0.5,
                        "oracle_span": 0.3 + 0.1 * o - wild,
                    },
                    "blocks.1.hook_resid_post": {"precision": 0.0},
                },
            )
    return rows


@pytest.fixture
def fig_dir(tmp_path):
    table = pd.DataFrame(_rows([*VALID, INVALID]), columns=results.COLUMNS)
    results.write(tmp_path / results.RESULTS_FILE, table)
    (tmp_path / TASK).mkdir()
    _validity(tmp_path, [True, True, True, False])
    return tmp_path


def _validity(fig_dir, valid: list[bool]) -> None:
    organisms = [*VALID, INVALID][: len(valid)]
    pd.DataFrame({"organism": organisms, "pretrain_seed": range(len(valid)), "valid": valid}).to_csv(
        fig_dir / TASK / population.VALIDITY_FILE, index=False
    )


def t_interval(values, clip=(0.0, 1.0)) -> tuple[float, float, float]:
    v = np.asarray(values, dtype=float)
    half = scipy.stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return v.mean(), max(v.mean() - half, clip[0]), min(v.mean() + half, clip[1])


def _i(method: str, directions: str = "none", param: str = "") -> int:
    return CONFIGS.index((method, directions, param))


def _ends(trace, axis: str = "y") -> tuple[np.ndarray, np.ndarray]:
    err = getattr(trace, f"error_{axis}")
    centre = np.asarray(getattr(trace, axis), dtype=float)
    return centre - np.asarray(err.arrayminus), centre + np.asarray(err.array)


def test_the_headline_is_the_mean_over_valid_organisms_with_their_interval_and_n(fig_dir):
    figs = population_figures.draw(population_figures.load(fig_dir, TASK))
    fig = figs["population_headline"][0]
    trace = next(t for t in fig.data if t.name == "zero · pca")
    m, lo, hi = t_interval([np.mean([ood(_i("zero", "pca"), o, s) for s in (0, 1)]) for o in range(3)])
    assert trace.x[0] == pytest.approx(m) and [e[0] for e in _ends(trace, "x")] == pytest.approx([lo, hi])
    assert trace.customdata[0][4] == 3  # n: the three valid organisms, not the fourth
    steer = next(t for t in fig.data if t.name == "steer_mean · pca")
    # drawn bottom up, so k=-3 reads above k=3
    assert [list(y) for y in steer.y] == [
        ["steering family"] * 2,
        ["steer_mean · pca (k=3)", "steer_mean · pca (k=-3)"],
    ]
    # base and plain are lines, not rows; no null draw
    assert not any(t.name in ("base", "plain") or "random/0" in str(t.y) for t in fig.data)
    lines = {s.annotation.text if hasattr(s, "annotation") else None: s.x0 for s in fig.layout.shapes}
    plain = np.mean([np.mean([ood(0, o, s) for s in (0, 1)]) for o in range(3)])
    assert sorted(s.x0 for s in fig.layout.shapes) == pytest.approx(sorted([plain, 0.5])), lines
    groups = [t.y[0][0] for t in fig.data]
    assert groups == sorted(groups, key=list(palette.GROUPS).index)  # grouped in the palette's order


def test_the_tradeoff_has_both_intervals_the_curve_on_every_panel_and_few_labels(fig_dir):
    fig = population_figures.draw(population_figures.load(fig_dir, TASK))["population_tradeoff"][0]
    i = _i("zero", "sae")
    trace = next(t for t in fig.data if t.name == "zero · sae")
    mx, lox, hix = t_interval([idv(i, o) for o in range(3)])
    my, loy, hiy = t_interval([np.mean([ood(i, o, s) for s in (0, 1)]) for o in range(3)])
    assert (trace.x[0], trace.y[0]) == pytest.approx((mx, my))
    assert [e[0] for e in _ends(trace, "x")] == pytest.approx([lox, hix])
    assert [e[0] for e in _ends(trace, "y")] == pytest.approx([loy, hiy])
    assert trace.customdata[0][1] == 3
    curves = [t for t in fig.data if t.name == "fewer-examples curve"]
    assert len(curves) == 2 and list(curves[0].x) == sorted(curves[0].x)
    assert len(curves[0].x) == 4  # base, n=96, n=160, plain
    panel_of = {t.name: t.xaxis for t in fig.data}
    assert panel_of["zero · sae"] != panel_of["steer_mean · pca"]  # CAFT sets and the steering family apart
    for axis in {t.xaxis for t in fig.data}:
        labels = [x for t in fig.data if t.xaxis == axis and t.text is not None for x in t.text if x]
        assert len(labels) <= figures.MAX_LABELS
    legend = [t.name for t in fig.data if t.showlegend is not False]
    assert len(legend) == len(set(legend)) and "add · pca" in legend  # one entry per configuration, none cut
    assert fig.layout.height >= figures.LEGEND_ROW_PX * len(legend) + figures.LEGEND_MARGIN_PX


def test_labels_never_overprint_and_stay_within_the_budget():
    close = [(0.5, 0.5, "a"), (0.56, 0.46, "b"), (0.9, 0.1, "c")]
    assert figures.place_labels(close) == ["a", "", "c"]  # b's label would overprint a's
    # a point just above: no room for a's label
    assert figures.place_labels([(0.5, 0.5, "a"), (0.5, 0.52, "")]) == ["", ""]
    spread = [(x / 10, x / 10, f"p{x}") for x in range(10)]
    assert sum(bool(t) for t in figures.place_labels(spread, budget=4)) == 4
    assert figures.place_labels(spread, budget=3)[:3] == ["p0", "p1", "p2"]  # in priority order


def test_the_decomposition_orders_caft_and_its_parts(fig_dir):
    fig = population_figures.draw(population_figures.load(fig_dir, TASK))["population_decomposition"][0]
    ood_panel = [t for t in fig.data if t.xaxis == "x" and "dashed line" not in t.name]
    assert [x for t in ood_panel for x in t.x] == [
        "zero",
        "detached",
        "grad_only",
        "mean",
        "steer_mean (k=-3)",
        "steer_mean (k=3)",
        "add (alpha=4.0)",
    ]
    detached = next(t for t in ood_panel if t.name == "detached · pca")
    m, lo, hi = t_interval([np.mean([ood(_i("detached", "pca"), o, s) for s in (0, 1)]) for o in range(3)])
    assert detached.y[0] == pytest.approx(m) and [e[0] for e in _ends(detached)] == pytest.approx([lo, hi])
    assert len([s for s in fig.layout.shapes if s.type == "line"]) == 4  # base and plain on each panel
    references = [t.name for t in fig.data if "dashed line" in t.name]
    assert references == ["base (dashed line)", "plain (dashed line)"]  # named once, in the legend


def test_each_question_has_its_own_axis_zero_line_and_interval(fig_dir):
    from caft_tl.evaluation import questions

    pop = population_figures.load(fig_dir, TASK)
    fig = population_figures.draw(pop)["population_questions"][0]
    answers = questions.answers(pop.table, "ood", "accuracy", organisms=list(pop.valid)).set_index("question")
    points = {t.yaxis: t for t in fig.data}
    assert len(points) == int((answers["n"] > 0).sum()) == 4  # c–f measured here; a and b not
    zero_lines = [s for s in fig.layout.shapes if s.y0 == s.y1 == 0]
    assert len(zero_lines) == len(answers)  # the zero line on every panel, measured or not
    c = next(t for t in fig.data if t.customdata[0][2] and abs(t.y[0] - answers.loc["c", "value"]) < 1e-12)
    assert [e[0] for e in _ends(c)] == pytest.approx([answers.loc["c", "low"], answers.loc["c", "high"]])
    ranges = {tuple(fig.layout[k].range) for k in fig.layout if k.startswith("yaxis") and fig.layout[k].range}
    assert len(ranges) > 1  # each answer on its own scale
    assert all(lo < 0 < hi for lo, hi in ranges)  # and the zero line always in view
    titles = [a.text for a in fig.layout.annotations]
    assert any(t.startswith("c · detached vs CAFT (n=3)") for t in titles)
    assert titles.count("not measured") == 2


def test_interpretation_scores_per_direction_source(fig_dir):
    fig = population_figures.draw(population_figures.load(fig_dir, TASK))["population_interpretation"][0]
    span = {t.x[0]: t for t in fig.data if t.xaxis == "x3"}
    assert list(span) == ["pca", "sae", "topk_pca"]  # the palette's order: CAFT sets, then controls
    m, lo, hi = t_interval([0.3 + 0.1 * o for o in range(3)])
    assert span["pca"].y[0] == pytest.approx(m)
    assert [e[0] for e in _ends(span["pca"])] == pytest.approx([lo, hi])
    assert span["pca"].customdata[0][4] == 3


def test_write_task_writes_each_figure_with_its_caption_file(fig_dir, monkeypatch):
    monkeypatch.setattr(figures, "code_commit", lambda: "abc1234")
    paths = population_figures.write_task(fig_dir, TASK, formats="")
    assert [p.stem for p in paths] == list(population_figures.NAMES)
    caption = (fig_dir / TASK / "population_headline.caption.md").read_text()
    digest = hashlib.sha256((fig_dir / results.RESULTS_FILE).read_bytes()).hexdigest()[:12]
    assert "n = 3 valid organisms of 4" in caption and "95% t-interval over organisms" in caption
    assert digest in caption and "commit abc1234" in caption and population.VALIDITY_FILE in caption


def test_one_valid_organism_gives_intervals_over_fine_tuning_seeds(fig_dir):
    _validity(fig_dir, [True, False, False, False])
    pop = population_figures.load(fig_dir, TASK)
    assert pop.over == "fine-tuning seeds" and "1 valid organism (of 4)" in pop.n
    headline = population_figures.draw(pop)["population_headline"][0]
    trace = next(t for t in headline.data if t.name == "zero · pca")
    m, lo, hi = t_interval([ood(_i("zero", "pca"), 0, s) for s in (0, 1)])
    assert trace.x[0] == pytest.approx(m) and [e[0] for e in _ends(trace, "x")] == pytest.approx([lo, hi])


def test_bad_input_is_one_line(fig_dir, tmp_path_factory, capsys):
    with pytest.raises(ValueError, match=r"no rows of task 'persona_em' in .*csv'; tasks there: double_mc$"):
        population_figures.load(fig_dir, "persona_em")
    _validity(fig_dir, [False] * 3)
    with pytest.raises(population_figures.NoValidOrganismError, match="has no valid organism"):
        population_figures.load(fig_dir, TASK)
    table = results.read(fig_dir / results.RESULTS_FILE)
    results.write(fig_dir / results.RESULTS_FILE, table.assign(task="em_advice"))  # a real model's task
    assert population_figures.main([str(fig_dir)]) == 0
    assert "'em_advice' is not an organism task" in capsys.readouterr().out
    empty = tmp_path_factory.mktemp("empty")
    assert population_figures.main([str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "results.csv" in err and "make run" in err


def test_without_a_browser_make_figures_writes_html_and_says_why_in_one_line(fig_dir, monkeypatch, capsys):
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.delenv(figures.FORMATS_ENV, raising=False)
    monkeypatch.setattr(figures.shutil, "which", lambda name: None)
    monkeypatch.setattr(figures, "_warned", False)
    figures.chrome_path.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert population_figures.main([str(fig_dir)]) == 0
    finally:
        figures.chrome_path.cache_clear()
    out = capsys.readouterr().out
    assert out.count("no Chrome/Chromium found") == 1
    assert not [w for w in caught if "Chromium" in str(w.message)]  # not again as a warning per figure
    assert [line for line in out.splitlines() if "Chrome" in line] == [f"note: {figures.NO_BROWSER}"]
    assert (fig_dir / TASK / "population_headline.html").exists() and not list((fig_dir / TASK).glob("*.png"))


def test_the_palette_refuses_duplicates_and_unsafe_colours():
    p = palette.Palette()
    p.add("zero · pca", palette.OKABE_ITO["blue"], "CAFT sets")
    with pytest.raises(ValueError, match=r"'zero · pca' is already in the palette"):
        p.add("zero · pca", palette.OKABE_ITO["orange"], "CAFT sets")
    with pytest.raises(ValueError, match=r"would look like 'zero · pca'"):
        p.add("zero · sae", palette.OKABE_ITO["blue"], "CAFT sets")
    with pytest.raises(ValueError, match=r"colour '#ff0000' of 'x' is not colour-blind safe"):
        p.add("x", "#ff0000", "controls")
    with pytest.raises(ValueError, match=r"group 'misc' of 'x' is unknown; valid: reference"):
        p.add("x", palette.GREY, "misc")
    styles = list(palette.PALETTE)
    assert len({(s.colour, s.marker) for s in styles}) == len(styles)
    assert len({(s.colour, s.pattern) for s in styles}) == len(styles)
    assert all(s.colour in palette.COLOUR_BLIND_SAFE for s in styles)
    new = palette.PALETTE.style("zero · something_new")
    assert new.group == "other" and new == palette.PALETTE.style("zero · something_new")
    assert palette.PALETTE.order(["add · pca", "zero · new", "zero · random", "plain", "zero · pca"]) == [
        "plain",
        "zero · pca",
        "zero · random",
        "add · pca",
        "zero · new",
    ]


def test_a_tall_legend_makes_the_figure_taller():
    fig = go.Figure([go.Scatter(x=[0], y=[i], name=f"series {i}") for i in range(30)])
    tall = figures.LEGEND_ROW_PX * 30 + figures.LEGEND_MARGIN_PX
    assert figures.fit_legend(fig) == tall == fig.layout.height
    small = go.Figure([go.Scatter(x=[0], y=[0], name="one")])
    assert figures.fit_legend(small) == 520


def test_the_suite_draws_each_tasks_population_figures_after_chapter_06(tmp_path, monkeypatch, capsys):
    from caft_tl.runner import suite

    def fake_execute(nb, out, parameters, **kw):  # chapter 06 of one organism: its rows
        rows = [r for r in _rows(VALID[:2]) if r["organism"] == VALID[0]]
        results.append(Path(parameters["run_dir"]) / results.RESULTS_FILE, rows)

    drawn = []
    monkeypatch.setattr(suite.papermill, "execute_notebook", fake_execute)
    monkeypatch.setattr(suite, "summarise_population", lambda task_dir, fig_dir, task: f"{task.name}: ok")
    monkeypatch.setattr(
        population_figures, "write_task", lambda fig_dir, task: drawn.append((fig_dir, task)) or []
    )
    run = dict(only=["06"], progress=False, pretrain_seeds=[0])
    suite.run_tasks([TASK], tmp_path / "run", tmp_path / "figures", **run)
    assert drawn == [(tmp_path / "figures", TASK)]

    def none_valid(fig_dir, task):
        raise population_figures.NoValidOrganismError(f"task {task!r} has no valid organism in 'x'")

    monkeypatch.setattr(population_figures, "write_task", none_valid)
    suite.run_tasks([TASK], tmp_path / "run", tmp_path / "figures", **run)  # a note, not a failed run
    assert "note: task 'double_mc' has no valid organism" in capsys.readouterr().out
