"""JupyterLab in a real browser: a chapter executed with the fast parameters, opened in
JupyterLab on 127.0.0.1 and rendered by headless Chromium, shows its figure and no error output."""

import pytest

from caft_tl.runner import lab_check


@pytest.mark.skipif(
    lab_check.chromium() is None,
    reason="no Chromium for the browser check (Debian: apt-get install chromium)",
)
def test_chapter_00_renders_its_figure_in_jupyterlab(tmp_path, monkeypatch):
    """The run and its screenshot go under ``tmp_path`` (pytest keeps the last few); the path is printed
    (``-s``)."""
    monkeypatch.setenv("CAFT_TL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CAFT_TL_FIGURE_FORMATS", "")  # the page is what is checked; no PNG export needed
    result = lab_check.check("00", tmp_path / "lab_check", params={"pretrain_steps": 20})
    assert (
        result.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        and result.screenshot.stat().st_size > 10_000
    )
    assert result.figures >= 1, f"no plotly figure on the rendered page; see {result.screenshot}"
    assert result.errors == 0, f"error output on the rendered page; see {result.screenshot}"
    print(f"screenshot: {result.screenshot}")


def test_page_marks_count_figures_and_error_outputs():
    dom = (
        '<div class="js-plotly-plot" id="a"></div>'
        '<div class="jp-RenderedText" data-mime-type="application/vnd.jupyter.stdout">'
        '</div><div class="jp-RenderedText" data-mime-type="application/vnd.jupyter.stderr">Traceback</div>'
    )
    assert len(lab_check.FIGURE_MARK.findall(dom)) == 1 and len(lab_check.ERROR_MARK.findall(dom)) == 1
