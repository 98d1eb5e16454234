"""Plotly figures for each chapter, written to ``figures/`` as HTML (and PNG, or SVG/PDF on request
through ``$CAFT_TL_FIGURE_FORMATS``, where a Chrome/Chromium is available for kaleido), with one
consistent style: a title, axis labels with units, 95% intervals as error bars, and one palette
(:mod:`caft_tl.plotting.palette`: a colour, marker and place per method · directions) in every figure."""

from __future__ import annotations

import functools
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from caft_tl.core import files
from caft_tl.plotting.palette import OKABE_ITO, PALETTE, config_label, faded

TEMPLATE = "plotly_white"
#: the y-axis title of every behaviour-rate figure
RATE = "behaviour rate (0–1)"
SPLIT_COLOURS = [OKABE_ITO["blue"], OKABE_ITO["orange"], OKABE_ITO["bluish green"]]


#: bar opacity of the settings (``param``) of one method, which share its colour and pattern
PARAM_OPACITY = [1.0, 0.6, 0.35, 0.8, 0.45]


def _colour(label: str) -> str:
    return PALETTE.style(label).colour


def _order(labels) -> list[str]:
    return PALETTE.order(labels)


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
NO_BROWSER = (
    "no Chrome/Chromium found, so figures are written as HTML only. For PNG (and SVG/PDF) install one — "
    "Debian/Ubuntu: apt-get install chromium, or: .venv/bin/plotly_get_chrome — "
    "or set BROWSER_PATH to it, then re-run."
)
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


@dataclass(frozen=True)
class Caption:
    """A figure's caption for a paper: what it shows, its n, what its intervals are over, the data
    it was drawn from and the commit of the code that drew it."""

    text: str
    n: str  # e.g. "6 valid organisms of 8"
    interval: str  # e.g. "95% t-interval over organisms"
    data: str  # the file(s) every number comes from
    commit: str = ""  # default: the checkout's (:func:`code_commit`)

    def __str__(self) -> str:
        return (
            f"{self.text} n = {self.n}; intervals: {self.interval}. Data: {self.data}. "
            f"Drawn at commit {self.commit or code_commit()}."
        )


@functools.lru_cache(maxsize=1)
def code_commit() -> str:
    """The short git commit of this checkout (``+uncommitted`` where tracked files differ), or ``unknown``."""
    import subprocess

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return "unknown" if not commit else commit + ("+uncommitted" if dirty else "")


#: the size of a static figure whose layout sets none
STATIC_SIZE = (900, 520)


def save_figure(
    fig: go.Figure,
    name: str,
    caption: str | Caption,
    fig_dir: str | os.PathLike = "figures",
    formats: str | list[str] | tuple[str, ...] | None = None,
) -> Path:
    """Write ``name.html`` (plotly.js in a shared file beside it) and each static format
    (:func:`figure_formats`: PNG by default) when a Chrome/Chromium is present — without one,
    HTML only and a warning, once per process, saying how to get the rest; record the caption in
    ``figures/README.md`` (a :class:`Caption` also in ``name.caption.md``). The figure is made tall
    enough for its legend (:func:`fit_legend`)."""
    global _warned
    static = figure_formats(formats)
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    fig.update_layout(template=TEMPLATE, font=dict(size=13))
    fit_legend(fig, min_height=STATIC_SIZE[1])
    page = go.Figure(fig)
    page.layout.width = None  # the HTML fills its page's width; the static formats keep the figure's
    with files.atomic_write(fig_dir / f"{name}.html") as f:
        f.write(page.to_html(include_plotlyjs="directory", full_html=True))
    if not (fig_dir / "plotly.min.js").exists():  # the HTML files load plotly.js from beside them
        from plotly.offline import get_plotlyjs

        with files.atomic_write(fig_dir / "plotly.min.js") as f:
            f.write(get_plotlyjs())
    written = ["html"]
    if static and chrome_path():
        os.environ.setdefault("BROWSER_PATH", chrome_path())
        _png_server()
        width, height = fig.layout.width or STATIC_SIZE[0], fig.layout.height
        for fmt in static:
            with warnings.catch_warnings(), files.atomic_write(fig_dir / f"{name}.{fmt}", "wb") as f:
                warnings.filterwarnings("ignore", message="The kopts argument is ignored")
                f.write(fig.to_image(format=fmt, width=width, height=height, scale=2 if fmt == "png" else 1))
        written += list(static)
    elif static and not _warned:
        warnings.warn(NO_BROWSER, stacklevel=2)
        _warned = True
    if isinstance(caption, Caption):
        with files.atomic_write(fig_dir / f"{name}.caption.md") as f:
            f.write(f"**{name}** ({', '.join(f'`{name}.{x}`' for x in written)}): {caption}\n")
    _index_caption(fig_dir, name, str(caption))
    return fig_dir / f"{name}.html"


def _index_caption(fig_dir: Path, name: str, caption: str) -> None:
    index_path = fig_dir / "captions.json"
    index = files.read_json(index_path) if index_path.exists() else {}
    index[name] = caption
    files.write_json(index_path, index)
    lines = [
        "# Figures",
        "",
        "Regenerated by `make run` (from the rows alone: `make figures`); each figure is an "
        "interactive HTML file, and a PNG where Chromium is installed (SVG/PDF too with "
        f"{FORMATS_ENV}=png,svg,pdf; the population figures have all three and a `.caption.md`).",
        "",
    ]
    lines += [f"- **{n}** (`{n}.html`, `{n}.png`): {c}" for n, c in sorted(index.items())]
    with files.atomic_write(fig_dir / "README.md") as f:
        f.write("\n".join(lines) + "\n")


def rate_bars(summary: pd.DataFrame, splits: list[str], title: str, yaxis: str = RATE) -> go.Figure:
    """Grouped bars: one group per split, one bar per configuration, 95% intervals over seeds."""
    s = summary[summary["split"].isin(splits) & (summary["metric"] != "coherence")].copy()
    untrained = (
        ~s["trained"].astype(bool) & (s["method"] != "base")
        if "trained" in s
        else pd.Series(False, index=s.index)
    )
    setting = [
        " ".join(x for x in ("untrained" if u else "", p) if x)
        for u, p in zip(untrained, s["param"].fillna(""))
    ]
    s["label"] = [
        config_label(m, d) + (f" ({p})" if p else "")
        for m, d, p in zip(s["method"], s["directions"], setting)
    ]
    fig = go.Figure()
    settings: dict[str, int] = {}
    for label in _order(s["label"]):
        g = s[s["label"] == label].set_index("split").reindex(splits)
        base_label = label.split(" (")[0]
        n = settings[base_label] = settings.get(base_label, -1) + 1  # the method's n-th setting: its opacity
        style = PALETTE.style(base_label)
        fig.add_bar(
            name=label,
            x=splits,
            y=g["mean"],
            marker_color=style.colour,
            marker_pattern_shape=style.pattern,
            marker_opacity=PARAM_OPACITY[n % len(PARAM_OPACITY)],
            error_y=dict(
                type="data", symmetric=False, array=g["high"] - g["mean"], arrayminus=g["mean"] - g["low"]
            ),
        )
    fig.update_layout(
        title=title,
        barmode="group",
        yaxis=dict(title=yaxis, range=[0, 1.05]),
        xaxis_title="evaluation split",
        legend_title="method · directions",
    )
    return fig


#: at most this many text labels on one panel; the other points say who they are in their hover text
MAX_LABELS = 6
#: the box a label takes beside its point (fractions of the x and y axis ranges): a label whose box
#: meets another label's box or another point would overprint, and is left out
LABEL_BOX = (0.14, 0.05)
#: a marker's half-size, in the same fractions
MARKER_RADIUS = 0.02


def place_labels(
    points: list[tuple[float, float, str]],
    x_range: tuple[float, float] = (0, 1.05),
    y_range: tuple[float, float] = (0, 1.05),
    budget: int = MAX_LABELS,
    box: tuple[float, float] = LABEL_BOX,
    others: list[tuple[float, float]] = (),
) -> list[str]:
    """The text to draw above and right of each ``(x, y, text)`` point (``textposition="top right"``),
    taken in priority order: ``""`` where the panel's ``budget`` is spent, or where the label's box
    (``box`` wide and high) would meet a label already placed or another marker (of ``points`` or
    ``others``, :data:`MARKER_RADIUS` round)."""

    def frac(x: float, y: float) -> tuple[float, float]:
        return (x - x_range[0]) / (x_range[1] - x_range[0]), (y - y_range[0]) / (y_range[1] - y_range[0])

    marks = [frac(x, y) for x, y, _ in points] + [frac(x, y) for x, y in others]
    r = MARKER_RADIUS
    placed: list[tuple[float, float]] = []
    out = []
    for i, (x, y, text) in enumerate(points):
        fx, fy = frac(x, y)
        clear_of_labels = all(abs(fx - px) >= box[0] or abs(fy - py) >= box[1] for px, py in placed)
        clear_of_points = all(
            not (fx - r < mx < fx + box[0] + r and fy - r < my < fy + box[1] + r)
            for j, (mx, my) in enumerate(marks)
            if j != i
        )
        drawable = pd.notna(x) and pd.notna(y) and len(placed) < budget
        if text and drawable and clear_of_labels and clear_of_points:
            placed.append((fx, fy))
            out.append(text)
        else:
            out.append("")
    return out


def data_range(
    values, lowest: float = 0.0, highest: float = 1.05, min_span: float = 0.25
) -> tuple[float, float]:
    """An axis range around ``values`` (a rate's: within ``lowest`` … ``highest``), padded, at least
    ``min_span`` wide."""
    v = pd.Series(values, dtype=float).dropna()
    if v.empty:
        return lowest, highest
    lo, hi = float(v.min()), float(v.max())
    pad = max(0.08 * (hi - lo), (min_span - (hi - lo)) / 2, 0.02)
    lo, hi = max(lowest, lo - pad), min(highest, hi + pad)
    return lo, hi


def param_order(param: str) -> tuple[float, str]:
    """A setting's place among its method's: by its first number (``k=-3`` before ``k=3``), then its text."""
    number = re.search(r"-?\d+(?:\.\d+)?", str(param))
    return (float(number.group()) if number else float("inf")), str(param)


def interval(mean: pd.Series, low: pd.Series, high: pd.Series) -> dict:
    """A plotly error bar from ``low`` to ``high`` around ``mean``."""
    return dict(
        type="data", symmetric=False, array=(high - mean).to_numpy(), arrayminus=(mean - low).to_numpy()
    )


#: the trade-off's panels, each with the groups of :data:`~caft_tl.plotting.palette.GROUPS` it shows (the
#: references and the fewer-examples curve are on every panel)
TRADEOFF_PANELS = {
    "CAFT sets and controls": ("CAFT sets", "controls", "other"),
    "steering family and baselines": ("steering family", "baselines"),
}
CURVE = "fewer_examples"


def tradeoff_points(summary: pd.DataFrame, x_split: str, y_split: str) -> pd.DataFrame:
    """One row per configuration with both splits: ``label``, ``param``, ``mean_x`` / ``low_x`` /
    ``high_x``, the same for y, and ``n`` (``n_organisms`` or ``n_seeds`` of the summary, if any); the
    null's draws (``random/<i>``) and coherence are left out."""
    s = summary[
        (summary["metric"] != "coherence") & ~summary["directions"].astype(str).str.match(r"random/\d+$")
    ]
    n_col = next((c for c in ("n", "n_organisms", "n_seeds") if c in s), None)
    s = s.assign(n=s[n_col] if n_col else float("nan"))
    cols = ["mean", "low", "high", "n"]
    xs = s[s["split"] == x_split].set_index(["method", "directions", "param"])[cols]
    ys = s[s["split"] == y_split].set_index(["method", "directions", "param"])[cols]
    both = xs.merge(ys, left_index=True, right_index=True, suffixes=("_x", "_y")).reset_index()
    both["n"] = both[["n_x", "n_y"]].min(axis=1)
    both["label"] = [config_label(m, d) for m, d in zip(both["method"], both["directions"])]
    return both.drop(columns=["n_x", "n_y"])


def _curve(both: pd.DataFrame) -> pd.DataFrame:
    """The fewer-examples curve: base, the fewer-examples settings and plain, by x."""
    return both[both["label"].isin(["base", CURVE, "plain"])].sort_values("mean_x")


#: the height of a legend entry and the room above and below the legend (pixels): :func:`fit_legend`
LEGEND_ROW_PX, LEGEND_MARGIN_PX = 30, 200


def legend_entries(fig: go.Figure) -> int:
    """The number of entries in the figure's legend (one per legend group)."""
    return len({t.legendgroup or t.name for t in fig.data if t.name and t.showlegend is not False})


def fit_legend(fig: go.Figure, min_height: int = 520) -> int:
    """Make the figure tall enough for every legend entry (a cut legend hides series); returns its height."""
    height = max(fig.layout.height or min_height, LEGEND_ROW_PX * legend_entries(fig) + LEGEND_MARGIN_PX)
    fig.update_layout(height=height)
    return height


def tradeoff(
    summary: pd.DataFrame,
    x_split: str,
    y_split: str,
    x_title: str,
    y_title: str,
    title: str,
    panels: dict[str, tuple[str, ...]] = TRADEOFF_PANELS,
) -> go.Figure:
    """Each configuration as a point (x: task behaviour kept, y: undesired behaviour) with its 95%
    intervals, one panel per group of configurations (:data:`TRADEOFF_PANELS`), each with base, plain
    and the fewer-examples curve (base → fewer examples → plain, the paper's baseline); the settings
    of one method are joined by a thin line. At most :data:`MAX_LABELS` text labels a panel, none
    overprinting (:func:`place_labels`); every point names itself in its hover text; one legend entry
    per configuration. The null's draws are left out: chapter 05 shows them (``05_null``)."""
    from plotly.subplots import make_subplots

    both = tradeoff_points(summary, x_split, y_split)
    x_range = data_range(pd.concat([both["low_x"], both["high_x"]]))
    y_range = data_range(pd.concat([both["low_y"], both["high_y"]]))
    fig = make_subplots(
        rows=1, cols=len(panels), shared_yaxes=True, subplot_titles=list(panels), horizontal_spacing=0.05
    )
    curve, shown = _curve(both), set()
    for col, groups in enumerate(panels.values(), start=1):
        fig.add_scatter(
            x=curve["mean_x"],
            y=curve["mean_y"],
            mode="lines",
            name="fewer-examples curve",
            legendgroup="curve",
            showlegend=col == 1,
            hoverinfo="skip",
            row=1,
            col=col,
            line=dict(color=_colour(CURVE), dash="dot", width=1.5),
        )
        in_panel = [
            lab in ("base", "plain", CURVE) or PALETTE.style(lab).group in groups for lab in both["label"]
        ]
        here = both[in_panel]
        order = _order(here["label"])
        rank = [(order.index(lab), param_order(p)) for lab, p in zip(here["label"], here["param"])]
        here = here.assign(order=rank)
        here = here.sort_values("order")
        ref, settings = here["label"].isin(["base", "plain"]), here.duplicated("label", keep=False)
        curve_points = here["label"] == CURVE
        ranked = pd.concat([here[ref], here[curve_points], here[~ref & ~curve_points & settings]])
        rest = here.drop(ranked.index)
        points = [
            (r.mean_x, r.mean_y, r.label if r.label in ("base", "plain") else r.param)
            for r in ranked.itertuples()
        ]
        text = place_labels(points, x_range, y_range, others=list(zip(rest["mean_x"], rest["mean_y"])))
        text = pd.Series(text, index=ranked.index).reindex(here.index).fillna("")
        for label in order:
            g, style = here[here["label"] == label], PALETTE.style(label)
            joined = len(g) > 1 and label != CURVE
            bar = dict(thickness=1.2, width=0, color=faded(style.colour))  # intervals behind the points
            fig.add_scatter(
                name=label,
                legendgroup=label,
                showlegend=label not in shown,
                x=g["mean_x"],
                y=g["mean_y"],
                mode=("lines+" if joined else "") + "markers+text",
                text=text[g.index],
                textposition="top right",
                textfont=dict(size=11, color=style.colour),
                marker=dict(
                    size=10, color=style.colour, symbol=style.marker, line=dict(width=1, color="white")
                ),
                line=dict(color=style.colour, width=1),
                customdata=list(zip(g["param"], g["n"])),
                hovertemplate=f"{label} %{{customdata[0]}}<br>x %{{x:.3f}}, y %{{y:.3f}}"
                "<br>n %{customdata[1]}<extra></extra>",
                error_x=interval(g["mean_x"], g["low_x"], g["high_x"]) | bar,
                error_y=interval(g["mean_y"], g["low_y"], g["high_y"]) | bar,
                row=1,
                col=col,
            )
            shown.add(label)
        fig.update_xaxes(title=x_title, range=list(x_range), row=1, col=col)
    fig.update_yaxes(title=y_title, range=list(y_range), row=1, col=1)
    fig.update_layout(title=title, legend_title="method · directions", width=1100)
    fit_legend(fig)
    return fig


def loss_curves(curves: dict[str, list[float]], title: str) -> go.Figure:
    fig = go.Figure()
    for label, losses in curves.items():
        fig.add_scatter(name=label, y=losses, mode="lines")
    fig.update_layout(
        title=title,
        xaxis_title="training step (one batch)",
        yaxis=dict(title="loss on response tokens (nats)", type="log"),
    )
    return fig


def monitor_curves(frame: pd.DataFrame, title: str) -> go.Figure:
    """What the model writes into each monitored subspace during training: ‖P x‖ at the subspace's own
    hook (before any ablation) against the step, a panel per subspace, a line per label (mean over
    runs; the band their range); labels in the palette's ``method · directions`` form get its colours.

    Args:
        frame: :func:`caft_tl.training.monitor.monitor_frame`'s table (``label, run, subspace, at,
            step, norm``).
        title: the figure's title.

    Returns:
        The figure.

    Example:
        fig = monitor_curves(monitor_frame({"plain": [rec0], "zero": [rec1]}), "written norm")
    """
    from plotly.subplots import make_subplots

    written = frame[frame["at"] == frame["subspace"]]
    subs = list(dict.fromkeys(written["subspace"]))
    fig = make_subplots(rows=1, cols=max(1, len(subs)), subplot_titles=subs, shared_yaxes=True)
    for col, sub in enumerate(subs, start=1):
        part = written[written["subspace"] == sub]
        for label in _order(part["label"]):
            by_step = part[part["label"] == label].groupby("step")["norm"]
            mean, low, high = by_step.mean(), by_step.min(), by_step.max()
            colour = _colour(label)
            fig.add_scatter(
                x=list(mean.index) + list(mean.index[::-1]),
                y=list(high) + list(low[::-1]),
                fill="toself",
                mode="lines",
                fillcolor=faded(colour, 0.2),
                line=dict(width=0),
                hoverinfo="skip",
                showlegend=False,
                row=1,
                col=col,
            )
            fig.add_scatter(
                x=mean.index,
                y=mean,
                name=label,
                mode="lines+markers",
                line=dict(color=colour),
                legendgroup=label,
                showlegend=col == 1,
                row=1,
                col=col,
            )
        fig.update_xaxes(title="training step", row=1, col=col)
    fig.update_yaxes(title="‖P x‖ at its hook (response positions)", row=1, col=1)
    fig.update_layout(
        title=title, template=TEMPLATE, legend_title="fine-tune", width=max(600, 380 * len(subs))
    )
    return fig


def spectrum(fractions: dict[str, list[float]], title: str) -> go.Figure:
    fig = go.Figure()
    for hook, frac in fractions.items():
        fig.add_bar(name=hook, x=[f"PC{i}" for i in range(len(frac))], y=frac)
    fig.update_layout(
        title=title,
        barmode="group",
        xaxis_title="principal direction of ft − base",
        yaxis_title="fraction of E[‖δ‖²]",
        legend_title="hook",
    )
    return fig


def concept_heatmap(scores: pd.DataFrame, concepts: list[str], title: str) -> go.Figure:
    labels = [f"{h.replace('hook_', '')} {d}" for h, d in zip(scores["hook"], scores["direction"])]
    fig = go.Figure(
        go.Heatmap(
            z=scores[concepts].to_numpy().T,
            x=labels,
            y=concepts,
            colorscale="Blues",
            zmin=0,
            zmax=1,
            colorbar_title="|cos|",
            text=scores[concepts].round(2).to_numpy().T,
            texttemplate="%{text}",
        )
    )
    fig.update_layout(title=title, xaxis_title="direction (hook, index)", yaxis_title="ground-truth concept")
    return fig


def check_bars(
    summary: pd.DataFrame,
    title: str,
    x: str = "split",
    y_title: str = RATE,
    legend: str = "intervention on the base model",
) -> go.Figure:
    """Grouped bars per condition with 95% intervals (base-model steering and latent checks)."""
    fig = go.Figure()
    for cond in summary["condition"].unique():
        g = summary[summary["condition"] == cond]
        fig.add_bar(
            name=cond,
            x=g[x],
            y=g["mean"],
            marker_color=_colour(cond),
            error_y=dict(
                type="data", symmetric=False, array=g["high"] - g["mean"], arrayminus=g["mean"] - g["low"]
            ),
        )
    fig.update_layout(
        title=title,
        barmode="group",
        xaxis_title=x.replace("_", " "),
        yaxis_title=y_title,
        legend_title=legend,
    )
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
        fig.add_bar(
            name=f"{split}: model", x=g["condition"], y=g["model"], marker_color=colour, offsetgroup=i
        )
        fig.add_scatter(
            name=f"{split}: {reference}",
            x=g["condition"],
            y=g["reference"],
            mode="markers",
            offsetgroup=i,
            marker=dict(symbol="line-ew-open", size=28, color="black", line=dict(width=3)),
        )
    fig.update_layout(
        title=title,
        barmode="group",
        scattermode="group",
        xaxis_title=x_title,
        yaxis=dict(title=RATE, range=[0, 1.05]),
    )
    return fig


def steering_bars(summary: pd.DataFrame, title: str, y_title: str) -> go.Figure:
    """One bar per condition (95% intervals), the unintervened value as a dashed line."""
    none = summary[summary["condition"] == "none"]["mean"]
    s = summary[summary["condition"] != "none"]
    fig = go.Figure(
        go.Bar(
            x=s["condition"],
            y=s["mean"],
            marker_color="#4c78a8",
            showlegend=False,
            error_y=dict(
                type="data", symmetric=False, array=s["high"] - s["mean"], arrayminus=s["mean"] - s["low"]
            ),
        )
    )
    if len(none):
        fig.add_hline(y=none.item(), line_dash="dash", annotation_text="no intervention")
    fig.update_layout(
        title=title, xaxis_title="intervention on the untrained base model", yaxis_title=y_title
    )
    return fig


def sae_quality(quality: pd.DataFrame, title: str) -> go.Figure:
    """Reconstruction quality per SAE: explained variance, loss recovered and dead latents (left),
    L0 (right)."""
    from plotly.subplots import make_subplots

    names = [f"{a} · {h.replace('hook_', '')}" for a, h in zip(quality["architecture"], quality["hook"])]
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.7, 0.3],
        subplot_titles=("fractions", "L0 (active latents per token)"),
    )
    for i, (col, label) in enumerate(
        [
            ("explained_variance", "explained variance"),
            ("loss_recovered", "loss recovered (vs zero-ablation)"),
            ("dead_fraction", "dead latents"),
        ]
    ):
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
    fig.update_layout(
        title=title,
        barmode="group",
        yaxis=dict(title="score against the ground truth (0–1)", range=[0, 1.05]),
        xaxis_title="metric",
        legend_title="directions",
    )
    return fig


def null_distribution(null: list[float], marks: dict[str, float], title: str, x_title: str) -> go.Figure:
    """A histogram of the null distribution (random subspaces) with each set's value as a vertical line."""
    fig = go.Figure()
    fig.add_histogram(
        x=null, name=f"random subspaces ({len(null)} draws)", marker_color=_colour("zero · random"), nbinsx=20
    )
    for name, v in marks.items():
        fig.add_vline(x=v, line_color=_colour(f"zero · {name}"), line_dash="dash", annotation_text=name)
    fig.update_layout(
        title=title, xaxis=dict(title=x_title, range=[0, 1.05]), yaxis_title="draws", bargap=0.05
    )
    return fig


#: the hover text of a question's point: the question, the verdict, the value [interval] and n
QUESTION_HOVER = (
    "%{hovertext}<br>%{y:+.3f} [%{customdata[0]:+.3f}, %{customdata[1]:+.3f}], "
    "n = %{customdata[2]} %{customdata[3]}<extra></extra>"
)


def question_panels(answers: pd.DataFrame, title: str, cols: int = 3) -> go.Figure:
    """The thread's questions (:func:`caft_tl.evaluation.questions.answers`) as small multiples: one
    panel per question, its value with the 95% interval on its own y axis in its own unit
    (:data:`~caft_tl.evaluation.questions.UNITS`), the zero line ("no difference") and n in its title;
    the verdict is the hover text, and a question without rows says "not measured"."""
    from plotly.subplots import make_subplots

    from caft_tl.evaluation.questions import SHORT, UNITS

    rows = -(-len(answers) // cols)
    titles = [f"{SHORT.get(str(r.question), r.question)} (n={r.n})" for r in answers.itertuples()]
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.12, vertical_spacing=0.2
    )
    colour, small = _colour("zero · pca"), dict(size=11)
    for i, r in enumerate(answers.itertuples()):
        at = dict(row=i // cols + 1, col=i % cols + 1)
        fig.add_hline(y=0, line_color="#333", line_width=1, exclude_empty_subplots=False, **at)
        value = f"{r.value:+.3f} [{r.low:+.3f}, {r.high:+.3f}]" if r.n else ""
        fig.update_xaxes(showticklabels=False, range=[-1, 1], title=dict(text=value, font=small), **at)
        unit = UNITS.get(str(r.question), "value")
        fig.update_yaxes(title=dict(text=unit, font=small), zeroline=False, **at)
        if not r.n:
            fig.add_annotation(
                text="not measured", x=0, y=0, yshift=14, showarrow=False, font=dict(color="#666"), **at
            )
            fig.update_yaxes(range=[-1, 1], showticklabels=False, **at)
            continue
        reach = max(abs(r.low), abs(r.high), abs(r.value), 1e-3) * 1.25
        error = dict(
            type="data", symmetric=False, array=[r.high - r.value], arrayminus=[r.value - r.low], width=8
        )
        fig.add_scatter(
            x=[0],
            y=[r.value],
            mode="markers",
            showlegend=False,
            marker=dict(size=11, color=colour),
            error_y=error,
            customdata=[[r.low, r.high, r.n, r.over]],
            hovertext=[f"{r.text}<br>{r.answer}"],
            hovertemplate=QUESTION_HOVER,
            **at,
        )
        fig.update_yaxes(range=[-reach, reach], **at)
    fig.update_annotations(font_size=12)
    fig.update_layout(title=title, template=TEMPLATE, width=1000, height=300 * rows + 120)
    return fig
