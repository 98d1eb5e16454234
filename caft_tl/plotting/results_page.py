"""One results page for a run: ``fig_dir/index.html``
(``python -m caft_tl.plotting.results_page FIG_DIR RUN_DIR``).

For every task under the figure folder: the population's headline, its population figures
(:mod:`caft_tl.plotting.population_figures`), then the tables: its organisms with each one's
validity gates, CAFT vs the baselines on the task's ID and OOD splits (the population summary's
mean over valid organisms [95% interval over organisms]); last, every organism's figures (the
interactive HTML files in iframes, each with its caption) with links to its executed notebooks.
The page is self-contained: relative links only, no CDN — it works offline from a ``file://`` URL
(each figure loads ``plotly.min.js`` from beside it). Written by the suite at the end of a run.
"""

from __future__ import annotations

import argparse
import datetime
import html
import json
import os
import re
import sys
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from caft_tl.core import files
from caft_tl.directions import sets
from caft_tl.evaluation import population, population_analyses, questions
from caft_tl.organism import TASKS, make_task
from caft_tl.plotting import population_figures

PAGE = "index.html"

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto; \
padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2.2em; }
.meta, .note { color: #666; font-size: 0.9em; }
nav ul { margin: 0.3em 0; } nav li { margin: 0.1em 0; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
th { background: #f4f4f4; } \
td.num { font-variant-numeric: tabular-nums; text-align: right; white-space: nowrap; }
.yes { color: #2a7a2a; } .no { color: #b22222; font-weight: 600; }
details.organism { border: 1px solid #ddd; border-radius: 4px; margin: 0.6em 0; padding: 0.3em 0.8em; }
details.organism > summary { cursor: pointer; font-weight: 600; }
figure { margin: 1.2em 0 1.8em; } figure h4 { margin: 0 0 0.3em; font-family: monospace; font-size: 1em; }
iframe.figure { width: 100%; height: 540px; border: 1px solid #eee; }
figcaption { color: #333; font-size: 0.93em; margin-top: 0.3em; }
.links a { margin-right: 0.8em; font-size: 0.9em; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _href(target: Path, page_dir: Path) -> str:
    """A relative, URL-quoted link from the page's folder to ``target``."""
    return quote(Path(os.path.relpath(target, page_dir)).as_posix())


def _task(name: str):
    try:
        return make_task(name)
    except (KeyError, ValueError):  # a folder of a task this checkout does not register
        return None


def _tasks(fig_dir: Path, run_dir: Path) -> list[str]:
    """Task folders with population files or figures or organism figures, in the registry's order."""
    names = {p.parent.name for p in fig_dir.glob(f"*/{population.VALIDITY_FILE}")}
    names |= {p.parent.name for n in population_figures.NAMES for p in fig_dir.glob(f"*/{n}.html")}
    names |= {p.parent.parent.name for p in fig_dir.glob("*/*/captions.json")}
    known = list(TASKS)
    return sorted(names, key=lambda n: (known.index(n) if n in known else len(known), n))


def _organism_dirs(fig_dir: Path, run_dir: Path, task: str) -> list[str]:
    found = {p.parent.name for p in (fig_dir / task).glob("*/captions.json")}
    found |= {p.parent.parent.name for p in (run_dir / task).glob("*/notebooks/*.ipynb")}
    return sorted(
        found, key=lambda n: (int(n[4:]) if n.startswith("seed") and n[4:].isdigit() else 1 << 30, n)
    )


def _read(path: Path) -> pd.DataFrame | None:
    return files.read_csv(path, keep_default_na=False) if path.exists() else None


def _bool(value: object) -> bool:
    return str(value).strip().lower() in ("true", "1")


def _mark(value: object) -> str:
    return '<span class="yes">✓</span>' if _bool(value) else '<span class="no">✗</span>'


def _cell(r) -> str:
    return f"{r.mean:.2f} [{max(r.low, 0.0):.2f}, {min(r.high, 1.0):.2f}]"


def _config(r) -> str:
    untrained = " (untrained)" if not _bool(r.trained) and r.method != "base" else ""
    return (
        " · ".join(str(x) for x in (r.method, r.directions if r.directions != "none" else "", r.param) if x)
        + untrained
    )


def _validity_table(
    verdicts: pd.DataFrame, organism_dirs: dict[str, str], run_dir: Path, task: str, page_dir: Path
) -> str:
    gate_cols = [c for c in verdicts.columns if re.match(r"[VE]\d_", c)]  # V1–V3 (gates), E1–E4 (em_gates)
    head = ["organism", "pre-training seed", *gate_cols, "valid", "executed notebooks"]
    rows = []
    for r in verdicts.to_dict("records"):
        folder = organism_dirs.get(str(r["pretrain_seed"]))
        nb_dir = run_dir / task / folder / "notebooks" if folder else None
        link = (
            f'<a href="{_href(nb_dir, page_dir)}/">{_e(folder)}/notebooks</a>'
            if nb_dir and nb_dir.is_dir()
            else "—"
        )
        cells = [
            f"<code>{_e(r['organism'])}</code>",
            _e(r["pretrain_seed"]),
            *(_mark(r[c]) for c in gate_cols),
            _mark(r["valid"]),
            link,
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    note = (
        ""
        if gate_cols
        else '<p class="note">No validity gates are defined for this task: every organism counts.</p>'
    )
    return (
        note
        + "<table><tr>"
        + "".join(f"<th>{_e(h)}</th>" for h in head)
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )


def _comparison_table(summary: pd.DataFrame, task) -> str:
    if summary.empty:
        return "<p>No valid organism: no CAFT comparison.</p>"
    splits = [task.id_split, task.ood_split] if task else list(dict.fromkeys(summary["split"]))
    null = (
        summary["directions"].astype(str).map(sets.is_null)
    )  # the null's draws: in the summary file, not in the page's table
    s = summary[summary["split"].isin(splits) & ~null]
    if task:
        s = s[s["metric"].isin(task.metrics)]
    s = s.assign(config=[_config(r) for r in s.itertuples()])
    titles = [f"{sp} ({task.metric(sp)})" if task else sp for sp in splits]
    if task:
        titles = [f"{t} — {'ID' if sp == task.id_split else 'OOD'}" for t, sp in zip(titles, splits)]
    out = [
        "<table><tr><th>configuration</th>"
        + "".join(f"<th>{_e(t)}</th>" for t in titles)
        + "<th>n organisms</th></tr>"
    ]
    for config, g in s.groupby("config", sort=False):
        by = {r.split: _cell(r) for r in g.itertuples()}
        out.append(
            f"<tr><td>{_e(config)}</td>"
            + "".join(f'<td class="num">{_e(by.get(sp, ""))}</td>' for sp in splits)
            + f'<td class="num">{int(g["n_organisms"].max())}</td></tr>'
        )
    n_null = null.any()
    note = (
        '<p class="note">Mean over valid organisms [95% interval over organisms, clipped to 0–1]. '
        + (
            "The null distribution's draws (<code>random/&lt;i&gt;</code>) are in the summary file "
            "and chapter 05's figures. "
            if n_null
            else ""
        )
        + "</p>"
    )
    return note + "".join(out) + "</table>"


def _figures(fig_dir: Path, run_dir: Path, task: str, folder: str, page_dir: Path) -> tuple[str, int]:
    """One organism's figures (iframe, caption, links) and executed notebooks; and its figure count."""
    org_fig = fig_dir / task / folder
    captions = files.read_json(org_fig / "captions.json") if (org_fig / "captions.json").exists() else {}
    if not isinstance(captions, dict):
        raise files.CorruptFileError(
            f"cannot read {str(org_fig / 'captions.json')!r}: expected an object of "
            "figure name → caption; re-run the chapters that wrote it"
        )
    names = sorted({p.stem for p in org_fig.glob("*.html")} - {Path(PAGE).stem})
    nb_dir = run_dir / task / folder / "notebooks"
    notebooks = sorted(nb_dir.glob("*.ipynb")) if nb_dir.is_dir() else []
    parts = []
    if notebooks:
        parts.append(
            '<p class="links">Executed notebooks: '
            + " ".join(f'<a href="{_href(nb, page_dir)}">{_e(nb.name)}</a>' for nb in notebooks)
            + "</p>"
        )
    parts += [
        _figure(
            org_fig, name, captions.get(name, "(no caption recorded)"), page_dir, f"{task}-{folder}-{name}"
        )
        for name in names
    ]
    if not names:
        parts.append('<p class="note">No figures for this organism.</p>')
    return "".join(parts), len(names)


def _figure(folder: Path, name: str, caption: str, page_dir: Path, anchor: str) -> str:
    """One figure: its interactive HTML in an iframe, its caption, and links to it, its static
    formats and its caption file."""
    src = _href(folder / f"{name}.html", page_dir)
    links = [f'<a href="{src}">open</a>']
    for ext, text in (("png", "PNG"), ("svg", "SVG"), ("pdf", "PDF"), ("caption.md", "caption")):
        if (folder / f"{name}.{ext}").exists():
            links.append(f'<a href="{_href(folder / f"{name}.{ext}", page_dir)}">{text}</a>')
    height = _height(folder / f"{name}.html")
    return (
        f'<figure id="{_e(anchor)}"><h4>{_e(name)}</h4>'
        f'<iframe class="figure" src="{src}" title="{_e(name)}" loading="lazy" scrolling="no"'
        + (f' style="height: {height + 20}px"' if height else "")
        + "></iframe>"
        f'<figcaption>{_e(caption)}</figcaption><div class="links">{" ".join(links)}</div></figure>'
    )


def _height(html_file: Path) -> int | None:
    """The height a figure's HTML file sets in its layout (tall figures: legends, small multiples), if any."""
    found = re.search(r'"height":\s*(\d+)', html_file.read_text()) if html_file.exists() else None
    return int(found.group(1)) if found else None


def _population_figures(fig_dir: Path, name: str, page_dir: Path) -> str:
    """The task's population figures (:mod:`caft_tl.plotting.population_figures`), each with its caption."""
    folder = fig_dir / name
    index = folder / "captions.json"
    captions = json.loads(index.read_text()) if index.exists() else {}
    present = [
        n
        for n in (*population_figures.NAMES, *population_figures.ROUTE_AROUND_NAMES)
        if (folder / f"{n}.html").exists()
    ]
    if not present:
        return (
            '<p class="note">No population figures (the suite draws them after chapter 06; '
            "or run make figures).</p>"
        )
    return "".join(
        _figure(folder, n, captions.get(n, "(no caption recorded)"), page_dir, f"{name}-{n}") for n in present
    )


#: chapters 05–06's analyses over valid organisms (:mod:`caft_tl.evaluation.population_analyses`), each
#: with its heading
ANALYSES = {
    population_analyses.NULL_SUMMARY_FILE: (
        "CAFT's place in the null of random subspaces (percentile over organisms)"
    ),
    population_analyses.REDUCTION_SUMMARY_FILE: (
        "EM reduction factor (excess chat misalignment over base, plain ÷ method)"
    ),
    population_analyses.CURVE_SUMMARY_FILE: "Distance above the fewer-examples curve (OOD at equal ID)",
}


def _number(v: object) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def _analyses(fig_dir: Path, name: str, page_dir: Path) -> str:
    """The task's population analysis files as tables (each linked), and which valid organism lacks
    which file."""
    out = []
    for file, title in ANALYSES.items():
        if not (fig_dir / name / file).exists():
            continue
        df = population_analyses.read_summary(fig_dir / name / file)
        head = "".join(f"<th>{_e(c)}</th>" for c in df.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{_e(_number(v))}</td>" for v in r) + "</tr>"
            for r in df.itertuples(index=False)
        )
        out.append(
            f'<h4>{_e(title)} — <a href="{_href(fig_dir / name / file, page_dir)}">{_e(file)}</a></h4>'
            f"<table><tr>{head}</tr>{body}</table>"
        )
    coverage = _read(fig_dir / name / population_analyses.COVERAGE_FILE)
    if coverage is not None:
        notes = population_analyses.notes(coverage)
        if notes:
            out.append('<ul class="note">' + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    return "".join(out)


def _questions_table(answers: pd.DataFrame) -> str:
    """The thread's questions (:mod:`caft_tl.evaluation.questions`) as an HTML table."""
    head = "<tr><th></th><th>question</th><th>answer</th><th>value</th><th>[95% interval]</th><th>n</th></tr>"
    body = "".join(
        f"<tr><td>{_e(r.question)}</td><td>{_e(r.text)}</td><td>{_e(r.answer)}</td>"
        f"<td>{_e(questions.VALUES.get(str(r.question), ''))}</td>"
        f"<td>{'' if not r.n else _e(f'{r.value:+.3f} [{r.low:+.3f}, {r.high:+.3f}]')}</td>"
        f"<td>{_e(f'{r.n} {r.over}' if r.n else 0)}</td></tr>"
        for r in answers.itertuples()
    )
    return f"<table>{head}{body}</table>"


def _task_section(fig_dir: Path, run_dir: Path, name: str, page_dir: Path) -> str:
    task = _task(name)
    verdicts = _read(fig_dir / name / population.VALIDITY_FILE)
    summary = _read(fig_dir / name / population.SUMMARY_FILE)
    folders = _organism_dirs(fig_dir, run_dir, name)
    out = [f'<section id="{_e(name)}"><h2>{_e(name)}</h2>']
    if verdicts is not None and summary is not None and task is not None:
        out.append(
            "<p><strong>"
            f"{_e(population.headline(name, verdicts, summary, task.ood_split, task.metric(task.ood_split)))}"
            "</strong></p>"
        )
    files_ = [
        fig_dir / name / f
        for f in (population.VALIDITY_FILE, population.SUMMARY_FILE, population.PER_ORGANISM_FILE)
    ]
    if any(f.exists() for f in files_):
        out.append(
            '<p class="links">Files: '
            + " ".join(f'<a href="{_href(f, page_dir)}">{_e(f.name)}</a>' for f in files_ if f.exists())
            + "</p>"
        )
    out.append(
        f'<h3 id="{_e(name)}-population">Population figures</h3>'
        + _population_figures(fig_dir, name, page_dir)
    )
    out.append(f'<h3 id="{_e(name)}-organisms">Organisms and validity</h3>')
    by_seed = {f[4:]: f for f in folders if f.startswith("seed")}
    out.append(
        _validity_table(verdicts, by_seed, run_dir, name, page_dir)
        if verdicts is not None
        else f'<p class="note">No {_e(population.VALIDITY_FILE)} '
        "(the population summary runs after chapter 06).</p>"
    )
    out.append(f'<h3 id="{_e(name)}-comparison">CAFT vs baselines</h3>')
    out.append(
        _comparison_table(summary, task)
        if summary is not None
        else f'<p class="note">No {_e(population.SUMMARY_FILE)}.</p>'
    )
    analyses = _analyses(fig_dir, name, page_dir)
    if analyses:
        out.append(f'<h3 id="{_e(name)}-analyses">Analyses over valid organisms</h3>' + analyses)
    answers = _read(fig_dir / name / population.QUESTIONS_FILE)
    if answers is not None:
        out.append(f'<h3 id="{_e(name)}-questions">The thread\'s questions</h3>' + _questions_table(answers))
    out.append(f'<h3 id="{_e(name)}-figures">Figures per organism</h3>')
    valid = {}
    if verdicts is not None:
        valid = {
            f"seed{r['pretrain_seed']}": (r["organism"], _bool(r["valid"]))
            for r in verdicts.to_dict("records")
        }
    for i, folder in enumerate(folders):
        body, n = _figures(fig_dir, run_dir, name, folder, page_dir)
        org, ok = valid.get(folder, ("", None))
        state = "" if ok is None else (" · valid" if ok else " · not valid")
        label = f"{folder}" + (f" · {org}" if org else "") + state + f" · {n} figure{'s' if n != 1 else ''}"
        out.append(
            f'<details class="organism" id="{_e(name)}-{_e(folder)}"{" open" if i == 0 else ""}>'
            f"<summary>{_e(label)}</summary>{body}</details>"
        )
    if not folders:
        out.append('<p class="note">No organism folders.</p>')
    return "".join(out) + "</section>"


def write(fig_dir: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """Write ``fig_dir/index.html`` (atomically) from the run's figures, population files and
    executed notebooks; returns its path. The first organism of each task is open, the others
    collapsed."""
    fig_dir, run_dir = Path(fig_dir).resolve(), Path(run_dir).resolve()
    page = fig_dir / PAGE
    tasks = _tasks(fig_dir, run_dir)
    toc = ["<nav><h2>Contents</h2><ul>"]
    for t in tasks:
        toc.append(
            f'<li><a href="#{_e(t)}">{_e(t)}</a>: '
            f'<a href="#{_e(t)}-population">population figures</a> · '
            f'<a href="#{_e(t)}-organisms">organisms</a> · '
            f'<a href="#{_e(t)}-comparison">CAFT vs baselines</a> · '
            f'<a href="#{_e(t)}-figures">figures</a></li>'
        )
    toc.append("</ul></nav>")
    tops = [
        fig_dir / f for f in ("results.csv", "results_summary.csv", "TABLES.md") if (fig_dir / f).exists()
    ]
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = (
        f'<h1>caft-tl results</h1><p class="meta">Figures: <code>{_e(fig_dir)}</code> · '
        f"run: <code>{_e(run_dir)}</code> · "
        f"page written {_e(stamp)}</p>"
        + (
            '<p class="links">Every row: '
            + " ".join(f'<a href="{_href(p, fig_dir)}">{_e(p.name)}</a>' for p in tops)
            + "</p>"
            if tops
            else ""
        )
        + '<p><button type="button" '
        "onclick=\"document.querySelectorAll('details.organism').forEach(d => d.open = true)\">"
        "expand all organisms"
        '</button> <button type="button" '
        "onclick=\"document.querySelectorAll('details.organism').forEach(d => d.open = false)\">"
        "collapse all</button></p>"
    )
    body = (
        head
        + "".join(toc)
        + (
            "".join(_task_section(fig_dir, run_dir, t, fig_dir) for t in tasks)
            or '<p class="note">No task folders with figures or population files.</p>'
        )
    )
    text = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>caft-tl results — {_e(fig_dir.name)}</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )
    with files.atomic_write(page, "wb") as f:  # UTF-8 whatever the locale
        f.write(text.encode())
    return page


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fig_dir", nargs="?", default="figures")
    ap.add_argument("run_dir", nargs="?", default="runs/default")
    args = ap.parse_args(argv)
    print(f"results page: {write(args.fig_dir, args.run_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
