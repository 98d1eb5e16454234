"""Figures for write-ups: formats on request, HTML-only with one clear note without a browser,
and one style (a colour per method, the same in every figure)."""

import warnings

import pandas as pd
import plotly.graph_objects as go
import pytest

from caft_tl.plotting import figures


def _fig():
    return go.Figure(go.Bar(x=["a", "b"], y=[0.2, 0.7]))


def test_figure_formats_from_argument_or_environment(monkeypatch):
    monkeypatch.delenv(figures.FORMATS_ENV, raising=False)
    assert figures.figure_formats() == ("png",)
    monkeypatch.setenv(figures.FORMATS_ENV, "PNG, svg,pdf,html,svg")
    assert figures.figure_formats() == ("png", "svg", "pdf")
    monkeypatch.setenv(figures.FORMATS_ENV, "")
    assert figures.figure_formats() == ()
    assert figures.figure_formats(["pdf"]) == ("pdf",)
    with pytest.raises(
        ValueError, match=r"unknown figure format\(s\) \['jpeg'\]; valid: html, png, svg, pdf"
    ):
        figures.figure_formats("png,jpeg")


@pytest.fixture
def no_browser(monkeypatch):
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setattr(figures.shutil, "which", lambda name: None)
    monkeypatch.setattr(figures, "_warned", False)
    figures.chrome_path.cache_clear()
    yield
    figures.chrome_path.cache_clear()


def test_without_a_browser_html_is_written_and_the_note_comes_once(tmp_path, no_browser):
    assert figures.chrome_path() is None
    assert "apt-get install chromium" in figures.missing_browser_note("png")
    assert figures.missing_browser_note("") is None  # HTML only was asked for: nothing to say
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in ("one", "two"):
            figures.save_figure(_fig(), name, f"caption {name}", tmp_path, formats="png,svg")
    notes = [w for w in caught if "no Chrome/Chromium found" in str(w.message)]
    assert len(notes) == 1 and "apt-get install chromium" in str(notes[0].message)
    assert (tmp_path / "one.html").stat().st_size > 0 and (tmp_path / "two.html").exists()
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.svg"))
    index = (tmp_path / "README.md").read_text()
    assert "- **one** (`one.html`, `one.png`): caption one" in index and "**two**" in index


@pytest.mark.skipif(
    figures.chrome_path() is None, reason="no Chrome/Chromium for kaleido (Debian: apt-get install chromium)"
)
def test_static_formats_on_request(tmp_path):
    figures.save_figure(_fig(), "fig", "a caption", tmp_path, formats=["png", "svg", "pdf"])
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "fig.svg").read_bytes()[:2000]
    assert (tmp_path / "fig.pdf").read_bytes()[:5] == b"%PDF-"


def test_one_style_per_method_and_the_same_order_everywhere():
    from caft_tl.plotting.palette import PALETTE

    configs = [
        ("steer_mean", "pca", "k=3"),
        ("zero", "random", ""),
        ("plain", "none", ""),
        ("steer_mean", "pca", "k=-3"),
        ("zero", "pca", ""),
    ]
    summary = pd.DataFrame(
        [
            {
                "method": m,
                "directions": d,
                "param": p,
                "split": "chat",
                "metric": "rate",
                "mean": 0.5,
                "low": 0.4,
                "high": 0.6,
            }
            for m, d, p in configs
        ]
    )
    bars = figures.rate_bars(summary, ["chat"], "t")
    assert [b.name for b in bars.data] == [
        "plain",
        "zero · pca",
        "zero · random",
        "steer_mean · pca (k=-3)",
        "steer_mean · pca (k=3)",
    ]
    styles = [
        PALETTE.style(k)
        for k in ["plain", "zero · pca", "zero · random", "steer_mean · pca", "steer_mean · pca"]
    ]
    assert [b.marker.color for b in bars.data] == [s.colour for s in styles]
    assert [b.marker.pattern.shape for b in bars.data] == [s.pattern for s in styles]
    # a control is hatched, a CAFT set is not; settings of one method differ by opacity
    assert bars.data[2].marker.pattern.shape != bars.data[1].marker.pattern.shape
    assert bars.data[3].marker.opacity != bars.data[4].marker.opacity
    assert list(bars.data[0].error_y.array) == pytest.approx([0.1])
    checks = pd.DataFrame(
        [
            {"condition": c, "split": "chat", "mean": 0.5, "low": 0.4, "high": 0.6}
            for c in ["none", "zero · pca"]
        ]
    )
    fig = figures.check_bars(checks, "t")
    assert [b.marker.color for b in fig.data] == [PALETTE.style(c).colour for c in ("base", "zero · pca")]
    assert fig.layout.yaxis.title.text == figures.RATE == bars.layout.yaxis.title.text


def test_the_suite_says_once_how_to_get_pngs_and_refuses_a_bad_format(
    tmp_path, no_browser, monkeypatch, capsys
):
    from caft_tl.runner import suite

    executed = []
    monkeypatch.setattr(suite.papermill, "execute_notebook", lambda nb, out, **kw: executed.append(nb))
    suite.run(tmp_path / "run", tmp_path / "figs", only=["00", "01"], progress=False)
    out = capsys.readouterr().out
    assert (
        len(executed) == 2
        and out.count("no Chrome/Chromium found") == 1
        and "apt-get install chromium" in out
    )
    monkeypatch.setenv(figures.FORMATS_ENV, "png,jpeg")
    with pytest.raises(ValueError, match="unknown figure format"):
        suite.run(tmp_path / "run2", tmp_path / "figs", only=["00"], progress=False)
    assert len(executed) == 2 and not (tmp_path / "run2").exists()
