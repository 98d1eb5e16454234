"""Chapter figures drawn from one organism's rows only, so the chapter and ``make figures`` draw the
same figure: chapter 06's trade-off and chapter 08's questions (intervals over fine-tuning seeds)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from caft_tl.core import results, stats
from caft_tl.evaluation import questions
from caft_tl.organism import Task
from caft_tl.plotting import figures


def _n_seeds(summary: pd.DataFrame) -> str:
    n = summary["n_seeds"] if "n_seeds" in summary else pd.Series(dtype=int)
    return f"{int(n.max())} fine-tuning seeds of one organism" if len(n) else "one organism"


def tradeoff(summary: pd.DataFrame, task: Task, data: str) -> tuple[go.Figure, figures.Caption]:
    """Chapter 06's figure from an organism's summary over seeds (:func:`caft_tl.core.stats.summarise`)."""
    x, y = task.id_split, task.ood_split
    fig = figures.tradeoff(
        summary,
        x,
        y,
        task.axis_titles[x],
        task.axis_titles[y],
        f"{task.name}: the task vs its generalisation (95% CI over seeds)",
    )
    text = (
        f"{task.name}: {x} vs {y} per method; the fewer-examples curve (base → fewer examples → plain) "
        "on each panel where run."
    )
    return fig, figures.Caption(text, _n_seeds(summary), "95% t-interval over fine-tuning seeds", data)


def question_figure(answers: pd.DataFrame, task: Task, data: str) -> tuple[go.Figure, figures.Caption]:
    """Chapter 08's figure: the thread's questions as small multiples, each on its own axis and unit."""
    over = answers["over"].iloc[-1]
    title = f"{task.name}: the thread's questions ({task.ood_split}, 95% interval over {over})"
    fig = figures.question_panels(answers, title)
    n = int(answers["n"].max()) if len(answers) else 0
    text = (
        "The thread's questions answered from this organism's rows, each value on its own axis with the "
        f"zero line (hover: the question and the verdict); {task.ood_split}."
    )
    return fig, figures.Caption(text, f"{n} {over} (at most)", f"95% t-interval over {over}", data)


def save_tradeoff(rows: pd.DataFrame, task: Task, folder: str | Path, data: str) -> Path:
    """Chapter 06's ``06_tradeoff`` from an organism's rows, into ``folder``."""
    fig, caption = tradeoff(stats.summarise(results.comparison(rows, task.metrics)), task, data)
    return figures.save_figure(fig, "06_tradeoff", caption, folder)


def save_questions(
    rows: pd.DataFrame, task: Task, folder: str | Path, data: str, directions: str = "pca"
) -> Path:
    """Chapter 08's ``08_questions`` from an organism's rows, into ``folder``."""
    answers = questions.answers(rows, task.ood_split, task.metric(task.ood_split), directions)
    fig, caption = question_figure(answers, task, data)
    return figures.save_figure(fig, "08_questions", caption, folder)
