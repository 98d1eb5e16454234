"""Chapter 10's figures: iterated CAFT by round against its random control, and plain vs CAFT by
training length; one panel per split (the task and its generalisation), each on its own axis."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from caft_tl.plotting import figures, palette

#: reference lines: plain fine-tuning and the untrained base
REFERENCE_DASH = {"plain": "dash", "base": "dot"}


def _panels(
    summary: pd.DataFrame,
    x: str,
    series: str,
    panels: list[tuple[str, str, str]],
    references: pd.DataFrame | None,
    title: str,
    x_title: str,
    colours: dict[str, str],
) -> go.Figure:
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for _, _, t in panels])
    for col, (split, metric, _) in enumerate(panels, start=1):
        part = summary[(summary["split"] == split) & (summary["metric"] == metric)]
        for name, g in part.groupby(series, sort=True):
            g = g.sort_values(x)
            fig.add_trace(
                go.Scatter(
                    x=g[x],
                    y=g["mean"],
                    error_y=figures.interval(g["mean"], g["low"], g["high"]),
                    mode="lines+markers",
                    name=str(name),
                    legendgroup=str(name),
                    showlegend=col == 1,
                    line=dict(color=colours.get(str(name))),
                ),
                row=1,
                col=col,
            )
        if references is not None:
            ref = references[(references["split"] == split) & (references["metric"] == metric)]
            for _, r in ref.iterrows():
                fig.add_hline(
                    y=r["mean"],
                    line_dash=REFERENCE_DASH.get(r["method"], "dot"),
                    line_color="grey",
                    annotation_text=r["method"],
                    annotation_position="top left",
                    row=1,
                    col=col,
                )
        fig.update_xaxes(title_text=x_title, type="category", row=1, col=col)
        fig.update_yaxes(title_text=metric, row=1, col=col)
    fig.update_layout(title=title, width=1000, height=460)
    return fig


def rounds(
    summary: pd.DataFrame, panels: list[tuple[str, str, str]], references: pd.DataFrame | None, title: str
):
    """Iterated CAFT: each split's rate by round (mean and 95% interval), the interpreted arm against
    the random control of equal rank; plain and base as reference lines.

    Args:
        summary: :func:`caft_tl.evaluation.iterated.summarise`'s table.
        panels: ``(split, metric, panel title)`` per panel.
        references: rows ``method`` (plain, base), ``split``, ``metric``, ``mean``; None for none.
        title: the figure's title.

    Example:
        fig = rounds(summary, [("ood", "misalignment_rate", "OOD")], None, "iterated CAFT")
    """
    colours = {
        "interpreted": palette.PALETTE.style("zero · pca").colour,
        "random_control": palette.PALETTE.style("zero · random").colour,
    }
    return _panels(summary, "round", "arm", panels, references, title, "round", colours)


def lengths(
    summary: pd.DataFrame, panels: list[tuple[str, str, str]], references: pd.DataFrame | None, title: str
):
    """Longer training: each split's rate of plain and CAFT by the multiple of the default steps.

    Args:
        summary: ``stats.summarise(rows, by=("length", "method", "split", "metric"))``.
        panels, references, title: as :func:`rounds`.

    Example:
        fig = lengths(summary, [("ood", "misalignment_rate", "OOD")], None, "longer training")
    """
    colours = {
        "plain": palette.PALETTE.style("plain").colour,
        "zero": palette.PALETTE.style("zero · pca").colour,
    }
    return _panels(summary, "length", "method", panels, references, title, "× the default steps", colours)
