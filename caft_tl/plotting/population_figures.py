"""Population figures of each task, drawn from the results rows alone (no chapter re-runs):
``python -m caft_tl.plotting.population_figures FIG_DIR [--run-dir RUN_DIR]`` (``make figures``).

From ``FIG_DIR/results.csv`` (every organism's rows, gathered by the suite) and each task's
``population_validity.csv`` (which organisms are valid; without it every organism counts), per task
into ``FIG_DIR/<task>/``:

- ``population_headline``: the OOD behaviour per configuration, methods grouped, base and plain as
  reference lines;
- ``population_tradeoff``: ID against OOD with the fewer-examples curve (:func:`figures.tradeoff`);
- ``population_decomposition``: CAFT (``zero``) against ``detached``, ``grad_only``, ``mean``,
  ``steer_mean`` ±k and ``add`` on the family's directions, OOD and ID;
- ``population_questions``: the thread's questions as small multiples (:func:`figures.question_panels`);
- ``population_interpretation``: precision, recall and oracle span of each direction source.

Every point is the mean over the valid organisms with a 95% t-interval over organisms (over
fine-tuning seeds when one organism is valid); each figure has a caption file
(:class:`figures.Caption`) with n, the interval, the data and the commit. With ``--run-dir`` it also
redraws each organism's ``06_tradeoff`` and ``08_questions`` from its rows and rewrites the results page.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from caft_tl.core import files, results, stats
from caft_tl.directions import sets
from caft_tl.evaluation import population, population_route_around, questions
from caft_tl.organism import TASKS, Task, make_task
from caft_tl.plotting import figures, iteration_figures, leakage_figures
from caft_tl.plotting.palette import PALETTE, config_label

#: the figures of a task, in the order the results page shows them
NAMES = (
    "population_headline",
    "population_tradeoff",
    "population_decomposition",
    "population_questions",
    "population_interpretation",
)
#: chapters 09–10's figures over the valid organisms, drawn from their summaries
#: (:mod:`caft_tl.evaluation.population_route_around`) where the suite wrote them
ROUTE_AROUND_NAMES = ("population_concept_shift", "population_iterated", "population_training_length")
#: the modes of the decomposition, in order (CAFT first)
DECOMPOSITION = ("zero", "detached", "grad_only", "mean", "steer_mean", "add")
#: the interpretation's scores, one panel each
SCORES = ("precision", "recall", "oracle_span")
#: the static formats of a population figure when ``$CAFT_TL_FIGURE_FORMATS`` is unset
PAPER_FORMATS = ("png", "svg", "pdf")
#: key columns of a configuration in a summary
CONFIG = ["method", "directions", "param", "trained", "split", "metric"]


class NoValidOrganismError(ValueError):
    """A task whose validity file names no valid organism: there is no population to draw."""


@dataclass(frozen=True)
class Population:
    """One task's rows and the organisms its figures summarise."""

    task: Task
    table: pd.DataFrame  # every row of the task
    valid: tuple[str, ...]  # the organisms summarised
    n_organisms: int  # every organism of the task, valid or not
    data: str  # where the rows come from (for the captions)

    @property
    def over(self) -> str:
        return "organisms" if len(self.valid) > 1 else "fine-tuning seeds"

    @property
    def n(self) -> str:
        """The n of the captions, e.g. ``6 valid organisms of 8``."""
        if len(self.valid) > 1:
            return f"{len(self.valid)} valid organisms of {self.n_organisms}"
        return f"the fine-tuning seeds of {len(self.valid)} valid organism (of {self.n_organisms})"

    def caption(self, text: str, interval: str | None = None) -> figures.Caption:
        return figures.Caption(text, self.n, interval or f"95% t-interval over {self.over}", self.data)


def task_rows(fig_dir: str | Path, task: str) -> tuple[pd.DataFrame, Path]:
    """The rows of ``task`` in ``fig_dir/results.csv`` and that file's path; one-line errors without them."""
    path = Path(fig_dir) / results.RESULTS_FILE
    if not path.exists():
        raise files.MissingArtefactError(
            f"no {str(path)!r}: run the suite (make run) first, it gathers every organism's rows there"
        )
    table = results.read(path)
    rows = table[table["task"] == task]
    if rows.empty:
        there = ", ".join(sorted(table["task"].unique())) or "none"
        raise ValueError(f"no rows of task {task!r} in {str(path)!r}; tasks there: {there}")
    return rows, path


def load(fig_dir: str | Path, task: str) -> Population:
    """The rows of ``task`` in ``fig_dir/results.csv`` and its valid organisms (those
    ``fig_dir/<task>/population_validity.csv`` marks valid; without it, every organism);
    :class:`NoValidOrganismError` when it marks none valid."""
    rows, path = task_rows(fig_dir, task)
    organisms = sorted(rows["organism"].unique())
    validity = Path(fig_dir) / task / population.VALIDITY_FILE
    data = f"{path} (sha256 {files.sha256_file(path)[:12]})"
    if validity.exists():
        v = pd.read_csv(validity, keep_default_na=False)
        valid = [o for o in v.loc[v["valid"].astype(str).str.lower() == "true", "organism"] if o in organisms]
        data += f", validity from {validity}"
        n_all = max(len(v), len(organisms))
    else:
        valid, n_all = organisms, len(organisms)
        data += " (no validity file: every organism counts)"
    if not valid:
        raise NoValidOrganismError(
            f"task {task!r} has no valid organism in {str(validity)!r}: no population figure to draw"
        )
    return Population(make_task(task), rows, tuple(valid), n_all, data)


def summary(pop: Population) -> pd.DataFrame:
    """Each configuration's mean over the valid organisms with its 95% interval and ``n`` (over
    fine-tuning seeds when one organism is valid); the null's draws are left out."""
    metrics = (*pop.task.metrics, population.COHERENCE)
    rows = pop.table[~pop.table["directions"].astype(str).map(sets.is_null)]
    if len(pop.valid) > 1:
        s = population.summarise(population.per_organism(rows, metrics), set(pop.valid))
        s = s.rename(columns={"n_organisms": "n"})
    else:
        one = results.comparison(rows[rows["organism"] == pop.valid[0]], metrics)
        s = stats.summarise(one, by=tuple(CONFIG)).rename(columns={"n_seeds": "n"})
    return s.reset_index(drop=True)


def _label(method: str, param: str) -> str:
    return method + (f" ({param})" if param else "")


#: the hover text of a point of :func:`_points`: its name, mean [interval] and n
HOVER = (
    "%{customdata[3]}: %{customdata[0]:.3f} [%{customdata[1]:.3f}, %{customdata[2]:.3f}], "
    "n %{customdata[4]}<extra></extra>"
)


def _points(fig: go.Figure, g: pd.DataFrame, style, axis: str, names: list[str], at, **where) -> None:
    """``g``'s means (columns mean, low, high, n) as markers of ``style`` at ``at`` on the other axis,
    with their 95% intervals along ``axis`` and every number in the hover text."""
    values = dict(x=g["mean"], y=at) if axis == "x" else dict(x=at, y=g["mean"])
    error = figures.interval(g["mean"], g["low"], g["high"]) | dict(thickness=1.5, width=5)
    fig.add_scatter(
        **values,
        mode="markers",
        name=style.label,
        marker=dict(size=11, color=style.colour, symbol=style.marker),
        customdata=list(zip(g["mean"], g["low"], g["high"], names, g["n"])),
        hovertemplate=HOVER,
        **{f"error_{axis}": error},
        **where,
    )


def _references(fig: go.Figure, s: pd.DataFrame, axis: str, legend: bool = False, **where) -> None:
    """base and plain as dashed lines across a panel (their means), each named at its end, or, with
    ``legend``, in the legend (where names at the line's end would meet the points)."""
    for label, position in (("base", "bottom"), ("plain", "top")):
        r = s[s["method"] == label]
        if r.empty:
            continue
        colour = PALETTE.style(label).colour
        line = dict(line_color=colour, line_dash="dash", line_width=1.5, **where)
        if not legend:
            line |= dict(
                annotation_text=label, annotation_font_color=colour, annotation_position=f"{position} right"
            )
        if axis == "x":
            fig.add_vline(x=float(r["mean"].iloc[0]), **line)
        else:
            fig.add_hline(y=float(r["mean"].iloc[0]), exclude_empty_subplots=False, **line)
        if legend and where.get("col", 1) == 1:
            fig.add_scatter(
                x=[None],
                y=[None],
                mode="lines",
                name=f"{label} (dashed line)",
                legendgroup=label,
                line=dict(color=colour, dash="dash", width=1.5),
            )


def headline(s: pd.DataFrame, task: Task, title: str) -> go.Figure:
    """The unwanted behaviour (the task's OOD rate) per configuration with its 95% interval, one row
    each, grouped (the palette's groups) and ordered as in every figure; base and plain as lines."""
    split, metric = task.ood_split, task.metric(task.ood_split)
    o = s[(s["split"] == split) & (s["metric"] == metric)]
    rows = o[~o["method"].isin(["base", "plain"])].copy()
    rows["config"] = [config_label(m, d) for m, d in zip(rows["method"], rows["directions"])]
    order = PALETTE.order(rows["config"])
    rank = [(order.index(c), figures.param_order(p)) for c, p in zip(rows["config"], rows["param"])]
    rows = rows.assign(rank=rank).sort_values("rank", ascending=False)  # drawn bottom up: the first on top
    fig = go.Figure()
    for config in order:
        g, style = rows[rows["config"] == config], PALETTE.style(config)
        names = [_label(config, p) for p in g["param"]]
        _points(fig, g, style, "x", names, [[style.group] * len(g), names], showlegend=False)
    _references(fig, o, "x")
    better = "lower is better" if _base_below_plain(o) else "higher is better"
    fig.update_xaxes(title=f"{split} {metric} ({better})", range=[0, 1.05])
    fig.update_yaxes(title=None, tickfont=dict(size=11))
    fig.update_layout(title=title, width=950, height=max(420, 26 * len(rows) + 180), margin=dict(l=260))
    return fig


def _base_below_plain(s: pd.DataFrame) -> bool:
    base, plain = s.loc[s["method"] == "base", "mean"], s.loc[s["method"] == "plain", "mean"]
    return bool(len(base) and len(plain) and base.iloc[0] < plain.iloc[0])


def family_directions(s: pd.DataFrame) -> str | None:
    """The direction set the steering family ran on: the one with the most of its modes (ties: ``pca``)."""
    fam = s[s["method"].isin(DECOMPOSITION[1:]) & s["trained"]]
    if fam.empty:
        return None
    counts = fam.groupby("directions")["method"].nunique()
    return max(counts.index, key=lambda d: (counts[d], d == "pca"))


def decomposition(s: pd.DataFrame, task: Task, directions: str, title: str) -> go.Figure:
    """CAFT (``zero``) and each mode of the family on ``directions`` (every setting), on the OOD and
    the ID split side by side, each with base and plain as lines."""
    from plotly.subplots import make_subplots

    splits = [task.ood_split, task.id_split]
    titles = [f"{sp} {task.metric(sp)} ({'OOD' if sp == task.ood_split else 'ID'})" for sp in splits]
    fig = make_subplots(rows=1, cols=2, subplot_titles=titles, horizontal_spacing=0.08)
    d = s[s["method"].isin(DECOMPOSITION) & (s["directions"] == directions) & s["trained"]]
    for col, split in enumerate(splits, start=1):
        on = (s["split"] == split) & (s["metric"] == task.metric(split))
        g = d[on.loc[d.index]]
        rank = [(DECOMPOSITION.index(m), figures.param_order(p)) for m, p in zip(g["method"], g["param"])]
        g = g.assign(rank=rank).sort_values("rank")
        for method in dict.fromkeys(g["method"]):
            m = g[g["method"] == method]
            names = [_label(method, p) for p in m["param"]]
            _points(
                fig,
                m,
                PALETTE.style(config_label(method, directions)),
                "y",
                names,
                names,
                legendgroup=method,
                showlegend=col == 1,
                row=1,
                col=col,
            )
        _references(fig, s[on], "y", legend=True, row=1, col=col)
        fig.update_yaxes(title=figures.RATE if col == 1 else None, range=[0, 1.05], row=1, col=col)
        order = [_label(m, p) for m, p in zip(g["method"], g["param"])]
        fig.update_xaxes(categoryorder="array", categoryarray=order, row=1, col=col)
    fig.update_layout(title=title, width=1100, legend_title=f"method · directions ({directions})")
    return fig


def interpretation(table: pd.DataFrame, valid: tuple[str, ...], title: str) -> go.Figure | None:
    """Chapter 03's scores of each direction source against the ground truth (the pooled ``all``
    rows): one panel per score, the mean over organisms with its 95% interval (clipped to 0–1) and n;
    None without interpretation rows (real models have no ground truth)."""
    from plotly.subplots import make_subplots

    t = table[
        (table["method"] == "interpretation")
        & (table["split"] == "all")
        & table["metric"].isin(SCORES)
        & table["organism"].isin(valid)
    ]
    if t.empty:
        return None
    per_org = t.groupby(["directions", "metric", "organism"])["value"].mean().reset_index()
    rows = []
    for (d, metric), g in per_org.groupby(["directions", "metric"]):
        m, lo, hi = stats.ci95(g["value"], stats.RATE_BOUNDS)
        n = int(g["value"].notna().sum())
        rows.append({"directions": d, "metric": metric, "mean": m, "low": lo, "high": hi, "n": n})
    s = pd.DataFrame(rows)
    order = [c.split(" · ", 1)[1] for c in PALETTE.order(f"zero · {d}" for d in s["directions"])]
    fig = make_subplots(
        rows=1,
        cols=len(SCORES),
        subplot_titles=[m.replace("_", " ") for m in SCORES],
        shared_yaxes=True,
        horizontal_spacing=0.04,
    )
    for col, metric in enumerate(SCORES, start=1):
        here = s[s["metric"] == metric].set_index("directions")
        here = here.reindex([d for d in order if d in here.index])
        for d in here.index:
            style = PALETTE.style(f"zero · {d}")
            _points(fig, here.loc[[d]], style, "y", [d], [d], showlegend=False, row=1, col=col)
        fig.update_xaxes(
            categoryorder="array",
            categoryarray=list(here.index),
            tickangle=-40,
            range=[-0.6, len(here) - 0.4],
            row=1,
            col=col,
        )
    fig.update_yaxes(title="score against the ground truth (0–1)", range=[0, 1.05], row=1, col=1)
    fig.update_layout(title=title, width=1100, height=480)
    return fig


def draw(pop: Population) -> dict[str, tuple[go.Figure, figures.Caption]]:
    """Every population figure of one task with its caption, by name (:data:`NAMES`; those without
    rows left out)."""
    task, s, name = pop.task, summary(pop), pop.task.name
    ood, idd, over = task.ood_split, task.id_split, f"95% CI over {pop.over}"
    out = {}
    if not s.empty:
        out["population_headline"] = (
            headline(s, task, f"{name}: {ood} {task.metric(ood)} per method ({over})"),
            pop.caption(
                f"{name}: the unwanted generalisation ({ood} {task.metric(ood)}) after each "
                "configuration, grouped as CAFT sets, controls, baselines and the steering family; "
                "base and plain fine-tuning as dashed lines."
            ),
        )
        out["population_tradeoff"] = (
            figures.tradeoff(
                s,
                idd,
                ood,
                task.axis_titles[idd],
                task.axis_titles[ood],
                f"{name}: the task vs its generalisation ({over})",
            ),
            pop.caption(
                f"{name}: {idd} against {ood} per configuration, with the fewer-examples curve "
                "(base → fewer examples → plain) on each panel; settings of one method are joined."
            ),
        )
    directions = family_directions(s) if not s.empty else None
    if directions:
        out["population_decomposition"] = (
            decomposition(s, task, directions, f"{name}: CAFT and its parts on {directions} ({over})"),
            pop.caption(
                f"{name}: CAFT (zero) vs its activation-only (detached) and gradient-only "
                "(grad_only) parts, mean-ablation, steering with ±k × the mean projection and "
                f"preventative steering (add), all on {directions}; {ood} (OOD) and {idd} (ID), "
                "base and plain as dashed lines."
            ),
        )
    answers = questions.answers(
        pop.table, ood, task.metric(ood), directions or "pca", organisms=list(pop.valid)
    )
    if answers["n"].gt(0).any():
        q_over = answers["over"].iloc[-1]
        out["population_questions"] = (
            figures.question_panels(answers, f"{name}: the thread's questions ({ood}, 95% CI over {q_over})"),
            pop.caption(
                f"{name}: the thread's questions, each on its own axis and unit with the zero line "
                "(no difference); + is better on the OOD split except (a) (+: toward the behaviour) "
                "and (b) (latent activation).",
                f"95% t-interval over {q_over}",
            ),
        )
    fig = interpretation(
        pop.table, pop.valid, f"{name}: each direction source scored against the ground truth"
    )
    if fig is not None:
        out["population_interpretation"] = (
            fig,
            pop.caption(
                f"{name}: precision, recall and oracle span (‖P q_oracle‖², mean over hooks) of "
                "each direction set chosen in chapter 03, against the ground truth.",
                "95% t-interval over organisms, clipped to 0–1",
            ),
        )
    return out


def _summary(folder: Path, table: population_route_around.Table) -> pd.DataFrame | None:
    path = folder / table.summary
    if not path.exists():
        return None
    df = files.read_csv(path, keep_default_na=False, na_values={c: [""] for c in ("mean", "low", "high")})
    return df if len(df) else None


def route_around(folder: str | Path, task: Task) -> dict[str, tuple[go.Figure, figures.Caption]]:
    """Chapters 09–10's population figures of one task, by name (:data:`ROUTE_AROUND_NAMES`), from
    the summaries in its figure ``folder``; those without a summary or rows left out.

    Example:
        route_around("figures/persona_em", make_task("persona_em"))
    """
    folder, out = Path(folder), {}
    leakage, iterated, length = (_summary(folder, t) for t in population_route_around.TABLES)
    panels = [(s, task.metric(s), f"{s} ({task.metric(s)})") for s in (task.id_split, task.ood_split)]

    def caption(text: str, df: pd.DataFrame, path: str) -> figures.Caption:
        n = int(df["n_organisms"].max())
        return figures.Caption(
            text, f"{n} valid organisms", "95% t-interval over organisms", str(folder / path)
        )

    if leakage is not None and (leakage["concept"] != "").any():
        wide = leakage.pivot_table(
            index=["method", "directions", "hook", "ablated", "concept"],
            columns="quantity",
            values="mean",
            sort=False,
        ).reset_index()
        title = f"{task.name}: concept shift by hook, plain vs CAFT (mean over organisms)"
        out["population_concept_shift"] = (
            leakage_figures.concept_shift_by_hook(wide, title),
            caption(
                "The mean shift of ft − base along each ground-truth concept direction at every hook, plain "
                "fine-tune vs the CAFT models; means over organisms (their intervals are in the data file).",
                leakage,
                "population_leakage.csv",
            ),
        )
    if iterated is not None:
        s = iterated[iterated["quantity"] == "value"]
        out["population_iterated"] = (
            iteration_figures.rounds(s, panels, None, f"{task.name}: iterated CAFT vs random control"),
            caption(
                "Iterated CAFT by round, interpreted directions vs random directions of equal rank.",
                s,
                "population_iterated.csv",
            ),
        )
    if length is not None:
        s = length[length["quantity"] == "value"]
        out["population_training_length"] = (
            iteration_figures.lengths(s, panels, None, f"{task.name}: plain vs CAFT by training length"),
            caption(
                "Plain fine-tuning and CAFT at multiples of the default steps.",
                s,
                "population_training_length.csv",
            ),
        )
    return out


def write_task(fig_dir: str | Path, task: str, formats=None) -> list[Path]:
    """Draw and save one task's population figures into ``fig_dir/<task>/`` (static formats:
    ``formats``, else ``$CAFT_TL_FIGURE_FORMATS``, else :data:`PAPER_FORMATS`); returns their HTML paths."""
    pop = load(fig_dir, task)
    if formats is None and figures.FORMATS_ENV not in os.environ:
        formats = PAPER_FORMATS
    folder = Path(fig_dir) / task
    drawn = {**draw(pop), **route_around(folder, pop.task)}
    return [
        figures.save_figure(fig, name, caption, folder, formats) for name, (fig, caption) in drawn.items()
    ]


def organism_figures(fig_dir: str | Path, task: str) -> list[Path]:
    """Each organism's ``06_tradeoff`` and ``08_questions`` redrawn from its rows in
    ``fig_dir/results.csv`` (into ``fig_dir/<task>/seed<s>/``, where that folder exists)."""
    from caft_tl.plotting import chapter_figures

    table, path = task_rows(fig_dir, task)
    world = make_task(task)
    out = []
    for organism in sorted(table["organism"].unique()):
        seed = re.search(r"-s(\d+)-", organism)
        folder = Path(fig_dir) / task / f"seed{seed.group(1)}" if seed else None
        if folder is None or not folder.is_dir():
            continue
        rows, data = table[table["organism"] == organism], f"the rows of {organism} in {path}"
        out += [
            chapter_figures.save_tradeoff(rows, world, folder, data),
            chapter_figures.save_questions(rows, world, folder, data),
        ]
    return out


def write(fig_dir: str | Path, run_dir: str | Path | None = None) -> list[Path]:
    """Every task's population figures from ``fig_dir/results.csv``; with ``run_dir``, each organism's
    ``06_tradeoff`` / ``08_questions`` too and the results page (:mod:`caft_tl.plotting.results_page`)."""
    path = Path(fig_dir) / results.RESULTS_FILE
    if not path.exists():
        raise files.MissingArtefactError(
            f"no {str(path)!r}: run the suite (make run) first, it gathers every organism's rows there"
        )
    out: list[Path] = []
    for task in dict.fromkeys(results.read(path)["task"]):
        if task not in TASKS:  # e.g. a real model's task: no organism design to read its splits from
            print(f"note: {task!r} is not an organism task ({', '.join(TASKS)}): no population figures")
            continue
        try:
            out += write_task(fig_dir, task)
        except NoValidOrganismError as e:
            print(f"note: {e}")
        if run_dir is not None:
            out += organism_figures(fig_dir, task)
    if run_dir is not None:
        from caft_tl.plotting import results_page

        out.append(results_page.write(fig_dir, run_dir))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fig_dir", nargs="?", default="figures")
    ap.add_argument("--run-dir", help="also redraw each organism's 06/08 figures and write the results page")
    args = ap.parse_args(argv)
    if note := figures.missing_browser_note(None if figures.FORMATS_ENV in os.environ else PAPER_FORMATS):
        print(f"note: {note}")  # once, here: not again as a warning per figure
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=re.escape(figures.NO_BROWSER))
            paths = write(args.fig_dir, args.run_dir)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(paths)} figures and pages written under {args.fig_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
