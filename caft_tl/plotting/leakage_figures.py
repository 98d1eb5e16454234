"""Chapter 09's figures from the leakage table (:func:`caft_tl.evaluation.leakage.leakage_table`): the
concept shift by hook, plain vs CAFT, and the energy of each model's change inside the ablated subspace."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from caft_tl.plotting.palette import PALETTE, config_label


def _short(hook: str) -> str:
    """``blocks.1.hook_resid_mid`` → ``1.resid_mid``."""
    return hook.removeprefix("blocks.").replace("hook_", "")


def concept_shift_by_hook(table: pd.DataFrame, title: str) -> go.Figure:
    """One panel per ground-truth concept: the mean shift of ``ft − base`` along the concept direction at
    every hook (in the table's order), for the plain fine-tune and each CAFT model; open markers at the
    hooks the set ablates (the model is diffed without the hook, as CAFT evaluates)."""
    t = table[table["concept"] != ""]
    concepts = list(dict.fromkeys(t["concept"]))
    if not concepts:
        raise ValueError(
            "the leakage table has no concept rows (a task without ground truth); nothing to draw"
        )
    hooks = list(dict.fromkeys(t["hook"]))
    fig = make_subplots(rows=1, cols=len(concepts), subplot_titles=[f"concept: {c}" for c in concepts])
    plain = t[t["method"] == "plain"].drop_duplicates(["hook", "concept"])  # the same in every set's rows
    lines = [("plain", plain.assign(ablated=False))] + [
        (config_label("zero", d), g) for d, g in t[t["method"] == "zero"].groupby("directions", sort=False)
    ]
    for col, concept in enumerate(concepts, start=1):
        for label, g in lines:
            g = g[g["concept"] == concept].set_index("hook").reindex(hooks)
            style = PALETTE.style(label)
            fig.add_scatter(
                name=label,
                x=[_short(h) for h in hooks],
                y=g["concept_shift"],
                mode="lines+markers",
                line_color=style.colour,
                marker=dict(
                    symbol=[style.marker + ("-open" if a else "") for a in g["ablated"].fillna(False)],
                    size=[13 if a else 8 for a in g["ablated"].fillna(False)],
                ),
                hovertext=[
                    f"{h}{' (ablated)' if a else ''}" for h, a in zip(hooks, g["ablated"].fillna(False))
                ],
                legendgroup=label,
                showlegend=col == 1,
                row=1,
                col=col,
            )
        fig.add_hline(y=0, line_color="#999999", line_width=1, row=1, col=col)
        fig.update_xaxes(title_text="hook (forward order)", row=1, col=col)
    fig.update_yaxes(title_text="mean shift of ft − base along the concept", row=1, col=1)
    fig.update_layout(title=title, legend_title="model (open markers: ablated hooks)")
    return fig


def energy_in_subspace(table: pd.DataFrame, title: str) -> go.Figure:
    """Grouped bars at each (set, ablated hook): the share of the diff's energy ``E‖δ‖²`` inside the
    subspace that set ablates, for the plain fine-tune and the CAFT model trained under it."""
    t = table[table["ablated"]].drop_duplicates(["method", "directions", "hook"])
    fig = go.Figure()
    for method in ("plain", "zero"):
        g = t[t["method"] == method]
        labels = [config_label(method, d) for d in g["directions"]]
        fig.add_bar(
            name="plain fine-tune" if method == "plain" else "CAFT model (zero · set)",
            x=[f"{d} @ {_short(h)}" for d, h in zip(g["directions"], g["hook"])],
            y=g["energy_in_subspace"],
            marker_color=[PALETTE.style(label).colour for label in labels],
            marker_pattern_shape="" if method == "plain" else "/",
            hovertext=labels,
        )
    fig.update_layout(
        title=title,
        barmode="group",
        xaxis_title="direction set @ ablated hook",
        yaxis=dict(title="share of E[‖ft − base‖²] in the ablated subspace", range=[0, 1.05]),
        legend_title="model",
    )
    return fig
