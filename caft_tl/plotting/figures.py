"""Plotly figures for each chapter, written to ``figures/`` as HTML (and PNG, or SVG/PDF on request
through ``$CAFT_TL_FIGURE_FORMATS``, where a Chrome/Chromium is available for kaleido), with one
consistent style: a title, axis labels with units, 95% intervals as error bars, one colour per
method and the same method order in every figure."""

from __future__ import annotations

import functools
import os
import shutil
import warnings
import zlib
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from caft_tl.core import files

#: the order and colour of every configuration, the same in every figure
METHOD_STYLE = {
    "base": "#7f7f7f",
    "plain": "#d62728",
    "fewer_examples": "#ff9896",
    "kl_to_base": "#f7b6d2",
    "mix_disambiguating": "#c49c94",
    "zero · pca": "#1f77b4",
    "zero · topk_pca": "#9467bd",
    "zero · oracle": "#2ca02c",
    "zero · diff_means": "#17becf",
    "zero · random": "#bcbd22",
    "zero · sae": "#e7ba52",
    "zero · topk_sae": "#c5b0d5",
    "zero · random_sae": "#dbdb8d",
    "mean · pca": "#aec7e8",
    "detached · pca": "#ff7f0e",
    "grad_only · pca": "#8c564b",
    "steer_mean · pca": "#e377c2",
    "add · pca": "#393b79",
}
TEMPLATE = "plotly_white"
#: the y-axis title of every behaviour-rate figure
RATE = "behaviour rate (0–1)"
SPLIT_COLOURS = ["#4c78a8", "#f58518", "#54a24b"]


def config_label(method: str, directions: str) -> str:
    return method if directions in ("none", "", None) or method in ("base", "plain", "fewer_examples") else f"{method} · {directions}"


def _order(labels) -> list[str]:
    known = list(METHOD_STYLE)
    return sorted(set(labels), key=lambda x: (known.index(x) if x in known else len(known), x))


#: colours for configurations not in METHOD_STYLE, chosen by a stable hash of the label
EXTRA_COLOURS = [c for c in qualitative.Dark24 if c.lower() not in {v.lower() for v in METHOD_STYLE.values()}]
#: bar patterns telling apart the settings (``param``) of one method, which share its colour
PARAM_PATTERNS = ["", "/", "x", ".", "\\", "+", "-", "|"]


def _colour(label: str) -> str:
    if label == "none":  # no intervention: the base model's grey
        return METHOD_STYLE["base"]
    return METHOD_STYLE.get(label) or EXTRA_COLOURS[zlib.crc32(label.encode()) % len(EXTRA_COLOURS)]


@functools.lru_cache(maxsize=1)
def chrome_path() -> str | None:
    """A Chrome/Chromium binary kaleido can drive, or None."""
    for name in (os.environ.get("BROWSER_PATH"), "chromium", "chromium-browser", "google-chrome", "chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


#: static formats kaleido writes beside the HTML (they need a Chrome/Chromium)
STATIC_FORMATS = ("png", "svg", "pdf")
#: comma-separated static formats for every figure of a process, e.g. "png,svg,pdf"; "" for HTML only
FORMATS_ENV = "CAFT_TL_FIGURE_FORMATS"
NO_BROWSER = ("no Chrome/Chromium found, so figures are written as HTML only. For PNG (and SVG/PDF) install one — "
              "Debian/Ubuntu: apt-get install chromium, or: .venv/bin/plotly_get_chrome — or set BROWSER_PATH to it, then re-run.")
_warned = False


def figure_formats(formats: str | list[str] | tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The static formats to write: ``formats`` if given, else ``$CAFT_TL_FIGURE_FORMATS``, else
    PNG. A string is comma-separated; ``html`` is accepted (HTML is always written)."""
    if formats is None:
        formats = os.environ.get(FORMATS_ENV, "png")
    if isinstance(formats, str):
        formats = formats.split(",")
    formats = [f.strip().lower() for f in formats if f.strip() and f.strip().lower() != "html"]
    bad = [f for f in formats if f not in STATIC_FORMATS]
    if bad:
        raise ValueError(f"unknown figure format(s) {bad}; valid: html, {', '.join(STATIC_FORMATS)}")
    return tuple(dict.fromkeys(formats))


def missing_browser_note(formats: str | list[str] | tuple[str, ...] | None = None) -> str | None:
    """The message to show once when static figures are asked for but no browser can draw them."""
    return NO_BROWSER if figure_formats(formats) and not chrome_path() else None


@functools.lru_cache(maxsize=1)
def _png_server() -> None:
    """Keep one Chromium for kaleido for the whole process (about 2 s saved per PNG)."""
    import atexit

    import kaleido

    kaleido.start_sync_server(silence_warnings=True)
    atexit.register(kaleido.stop_sync_server, silence_warnings=True)


def save_figure(fig: go.Figure, name: str, caption: str, fig_dir: str | os.PathLike = "figures",
                formats: str | list[str] | tuple[str, ...] | None = None) -> Path:
    """Write ``name.html`` (plotly.js in a shared file beside it) and each static format
    (:func:`figure_formats`: PNG by default) when a Chrome/Chromium is present — without one,
    HTML only and a warning, once per process, saying how to get the rest; record the caption in
    ``figures/README.md``."""
    global _warned
    static = figure_formats(formats)
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    fig.update_layout(template=TEMPLATE, font=dict(size=13))
    with files.atomic_write(fig_dir / f"{name}.html") as f:
        f.write(fig.to_html(include_plotlyjs="directory", full_html=True))
    if not (fig_dir / "plotly.min.js").exists():  # the HTML files load plotly.js from beside them
        from plotly.offline import get_plotlyjs

        with files.atomic_write(fig_dir / "plotly.min.js") as f:
            f.write(get_plotlyjs())
    if static and chrome_path():
        os.environ.setdefault("BROWSER_PATH", chrome_path())
        _png_server()
        for fmt in static:
            with warnings.catch_warnings(), files.atomic_write(fig_dir / f"{name}.{fmt}", "wb") as f:
                warnings.filterwarnings("ignore", message="The kopts argument is ignored")
                f.write(fig.to_image(format=fmt, width=900, height=520, scale=2 if fmt == "png" else 1))
    elif static and not _warned:
        warnings.warn(NO_BROWSER, stacklevel=2)
        _warned = True
    _index_caption(fig_dir, name, caption)
    return fig_dir / f"{name}.html"


def _index_caption(fig_dir: Path, name: str, caption: str) -> None:
    index_path = fig_dir / "captions.json"
    index = files.read_json(index_path) if index_path.exists() else {}
    index[name] = caption
    files.write_json(index_path, index)
    lines = ["# Figures", "", "Regenerated by `make run`; each figure is an interactive HTML file, and a PNG where Chromium is installed "
             f"(SVG/PDF too with {FORMATS_ENV}=png,svg,pdf).", ""]
    lines += [f"- **{n}** (`{n}.html`, `{n}.png`): {c}" for n, c in sorted(index.items())]
    with files.atomic_write(fig_dir / "README.md") as f:
        f.write("\n".join(lines) + "\n")


def rate_bars(summary: pd.DataFrame, splits: list[str], title: str, yaxis: str = RATE) -> go.Figure:
    """Grouped bars: one group per split, one bar per configuration, 95% intervals over seeds."""
    s = summary[summary["split"].isin(splits) & (summary["metric"] != "coherence")].copy()
    untrained = ~s["trained"].astype(bool) & (s["method"] != "base") if "trained" in s else pd.Series(False, index=s.index)
    setting = [" ".join(x for x in ("untrained" if u else "", p) if x) for u, p in zip(untrained, s["param"].fillna(""))]
    s["label"] = [config_label(m, d) + (f" ({p})" if p else "") for m, d, p in zip(s["method"], s["directions"], setting)]
    fig = go.Figure()
    settings: dict[str, int] = {}
    for label in _order(s["label"]):
        g = s[s["label"] == label].set_index("split").reindex(splits)
        base_label = label.split(" (")[0]
        n = settings[base_label] = settings.get(base_label, -1) + 1  # the method's n-th setting: its own pattern
        fig.add_bar(name=label, x=splits, y=g["mean"], marker_color=_colour(base_label),
                    marker_pattern_shape=PARAM_PATTERNS[n % len(PARAM_PATTERNS)],
                    error_y=dict(type="data", symmetric=False, array=g["high"] - g["mean"], arrayminus=g["mean"] - g["low"]))
    fig.update_layout(title=title, barmode="group", yaxis=dict(title=yaxis, range=[0, 1.05]), xaxis_title="evaluation split",
                      legend_title="method · directions")
    return fig


def tradeoff(summary: pd.DataFrame, x_split: str, y_split: str, x_title: str, y_title: str, title: str) -> go.Figure:
    """Each configuration as a point (x: task behaviour kept, y: undesired behaviour), with 95%
    intervals; ``fewer_examples`` settings are joined as a line (the paper's baseline curve). The
    draws of the null distribution (``random/<i>``) are left out: chapter 05 shows them (``05_null``)."""
    s = summary[(summary["metric"] != "coherence") & ~summary["directions"].astype(str).str.match(r"random/\d+$")]
    xs = s[s["split"] == x_split].set_index(["method", "directions", "param"])
    ys = s[s["split"] == y_split].set_index(["method", "directions", "param"])
    both = xs.join(ys, lsuffix="_x", rsuffix="_y", how="inner").reset_index()
    both["label"] = [config_label(m, d) for m, d in zip(both["method"], both["directions"])]
    fig = go.Figure()
    for label in _order(both["label"]):
        g = both[both["label"] == label]
        if label == "fewer_examples":
            g = g.assign(n=g["param"].str.extract(r"(\d+)")[0].astype(float)).sort_values("n")
        fig.add_scatter(
            name=label, x=g["mean_x"], y=g["mean_y"], mode="lines+markers+text" if label == "fewer_examples" else "markers+text",
            text=g["param"], textposition="top center",
            marker=dict(size=11, color=_colour(label)), line=dict(color=_colour(label), dash="dot"),
            error_x=dict(type="data", symmetric=False, array=g["high_x"] - g["mean_x"], arrayminus=g["mean_x"] - g["low_x"]),
            error_y=dict(type="data", symmetric=False, array=g["high_y"] - g["mean_y"], arrayminus=g["mean_y"] - g["low_y"]),
        )
    fig.update_layout(title=title, xaxis=dict(title=x_title, range=[0, 1.05]), yaxis=dict(title=y_title, range=[0, 1.05]),
                      legend_title="method · directions")
    return fig


def loss_curves(curves: dict[str, list[float]], title: str) -> go.Figure:
    fig = go.Figure()
    for label, losses in curves.items():
        fig.add_scatter(name=label, y=losses, mode="lines")
    fig.update_layout(title=title, xaxis_title="training step (one batch)", yaxis=dict(title="loss on response tokens (nats)", type="log"))
    return fig


def spectrum(fractions: dict[str, list[float]], title: str) -> go.Figure:
    fig = go.Figure()
    for hook, frac in fractions.items():
        fig.add_bar(name=hook, x=[f"PC{i}" for i in range(len(frac))], y=frac)
    fig.update_layout(title=title, barmode="group", xaxis_title="principal direction of ft − base",
                      yaxis_title="fraction of E[‖δ‖²]", legend_title="hook")
    return fig


def concept_heatmap(scores: pd.DataFrame, concepts: list[str], title: str) -> go.Figure:
    labels = [f"{h.replace('hook_', '')} {d}" for h, d in zip(scores["hook"], scores["direction"])]
    fig = go.Figure(go.Heatmap(z=scores[concepts].to_numpy().T, x=labels, y=concepts, colorscale="Blues", zmin=0, zmax=1,
                               colorbar_title="|cos|", text=scores[concepts].round(2).to_numpy().T, texttemplate="%{text}"))
    fig.update_layout(title=title, xaxis_title="direction (hook, index)", yaxis_title="ground-truth concept")
    return fig


def check_bars(summary: pd.DataFrame, title: str, x: str = "split", y_title: str = RATE, legend: str = "intervention on the base model") -> go.Figure:
    """Grouped bars per condition with 95% intervals (base-model steering and latent checks)."""
    fig = go.Figure()
    for cond in summary["condition"].unique():
        g = summary[summary["condition"] == cond]
        fig.add_bar(name=cond, x=g[x], y=g["mean"], marker_color=_colour(cond),
                    error_y=dict(type="data", symmetric=False, array=g["high"] - g["mean"], arrayminus=g["mean"] - g["low"]))
    fig.update_layout(title=title, barmode="group", xaxis_title=x.replace("_", " "), yaxis_title=y_title, legend_title=legend)
    if y_title == RATE:
        fig.update_yaxes(range=[0, 1.05])
    return fig


def reference_bars(table: pd.DataFrame, title: str, x_title: str, reference: str) -> go.Figure:
    """Model rate per ``condition`` (bars, one colour per split) against a ``reference`` rate
    (markers): chapter 00's ``task.base_report(model)``."""
    fig = go.Figure()
    splits = list(table["split"].unique())
    for i, split in enumerate(splits):
        g = table[table["split"] == split]
        colour = SPLIT_COLOURS[i % len(SPLIT_COLOURS)]
        fig.add_bar(name=f"{split}: model", x=g["condition"], y=g["model"], marker_color=colour, offsetgroup=i)
        fig.add_scatter(name=f"{split}: {reference}", x=g["condition"], y=g["reference"], mode="markers",
                        offsetgroup=i, marker=dict(symbol="line-ew-open", size=28, color="black", line=dict(width=3)))
    fig.update_layout(title=title, barmode="group", scattermode="group", xaxis_title=x_title,
                      yaxis=dict(title=RATE, range=[0, 1.05]))
    return fig


def steering_bars(summary: pd.DataFrame, title: str, y_title: str) -> go.Figure:
    """One bar per condition (95% intervals), the unintervened value as a dashed line."""
    none = summary[summary["condition"] == "none"]["mean"]
    s = summary[summary["condition"] != "none"]
    fig = go.Figure(go.Bar(x=s["condition"], y=s["mean"], marker_color="#4c78a8", showlegend=False,
                           error_y=dict(type="data", symmetric=False, array=s["high"] - s["mean"], arrayminus=s["mean"] - s["low"])))
    if len(none):
        fig.add_hline(y=none.item(), line_dash="dash", annotation_text="no intervention")
    fig.update_layout(title=title, xaxis_title="intervention on the untrained base model", yaxis_title=y_title)
    return fig


def sae_quality(quality: pd.DataFrame, title: str) -> go.Figure:
    """Reconstruction quality per SAE: explained variance, loss recovered and dead latents (left),
    L0 (right)."""
    from plotly.subplots import make_subplots

    names = [f"{a} · {h.replace('hook_', '')}" for a, h in zip(quality["architecture"], quality["hook"])]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.7, 0.3], subplot_titles=("fractions", "L0 (active latents per token)"))
    for i, (col, label) in enumerate([("explained_variance", "explained variance"), ("loss_recovered", "loss recovered (vs zero-ablation)"),
                                      ("dead_fraction", "dead latents")]):
        fig.add_bar(name=label, x=names, y=quality[col], marker_color=SPLIT_COLOURS[i], row=1, col=1)
    fig.add_bar(name="L0", x=names, y=quality["l0"], marker_color="#7f7f7f", showlegend=False, row=1, col=2)
    fig.update_layout(title=title, barmode="group")
    fig.update_yaxes(title="fraction (0–1)", range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(title="active latents per token", row=1, col=2)
    return fig


def interpretation_scores(score: pd.DataFrame, title: str) -> go.Figure:
    """Grouped bars of an interpretation's scores against the oracle: one group per metric
    (precision, recall, oracle_span), one bar per direction set; ``score`` has columns
    ``directions``, ``metric``, ``value`` (the pooled ``all`` rows)."""
    fig = go.Figure()
    metrics = ["precision", "recall", "oracle_span"]
    for name in dict.fromkeys(score["directions"]):
        g = score[score["directions"] == name].set_index("metric").reindex(metrics)
        fig.add_bar(name=name, x=metrics, y=g["value"], marker_color=_colour(f"zero · {name}"))
    fig.update_layout(title=title, barmode="group", yaxis=dict(title="score against the ground truth (0–1)", range=[0, 1.05]),
                      xaxis_title="metric", legend_title="directions")
    return fig


def null_distribution(null: list[float], marks: dict[str, float], title: str, x_title: str) -> go.Figure:
    """A histogram of the null distribution (random subspaces) with each set's value as a vertical line."""
    fig = go.Figure()
    fig.add_histogram(x=null, name=f"random subspaces ({len(null)} draws)", marker_color=_colour("zero · random"), nbinsx=20)
    for name, v in marks.items():
        fig.add_vline(x=v, line_color=_colour(f"zero · {name}"), line_dash="dash", annotation_text=name)
    fig.update_layout(title=title, xaxis=dict(title=x_title, range=[0, 1.05]), yaxis_title="draws", bargap=0.05)
    return fig


def question_bars(answers: pd.DataFrame, title: str) -> go.Figure:
    """The thread's questions (:func:`caft_tl.evaluation.questions.answers`): one bar per measured
    question, its value with the 95% interval, the verdict as hover text; 0 is "no difference"."""
    a = answers[answers["n"] > 0]
    from caft_tl.evaluation.questions import SHORT

    fig = go.Figure(go.Bar(x=[SHORT.get(str(q), str(q)) for q in a["question"]], y=a["value"],
                           error_y=dict(type="data", symmetric=False, array=a["high"] - a["value"], arrayminus=a["value"] - a["low"]),
                           hovertext=[f"{t}<br>{v}" for t, v in zip(a["text"], a["answer"])], marker_color=_colour("zero · pca")))
    fig.add_hline(y=0, line_color="#333", line_width=1)
    fig.update_layout(title=title, xaxis_title="question", yaxis_title="value (see the table; 0: no difference)",
                      template=TEMPLATE)
    return fig
