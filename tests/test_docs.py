"""The README and docs/: short, every Python block runs, every relative link (and its #anchor) resolves,
and the table scripts write their generated blocks into docs/results.md."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: the first line of a Python block that is shown but not run (it needs a model folder, a GPU, hours)
SKIP = "# not run by tests/test_docs.py:"
#: how many blocks each page shows without running; a new one must be counted here on purpose
SKIPPED = {"README.md": 1}
#: every generated block of docs/results.md and the script that writes it
BLOCKS = {
    "validity": "validity_tables.py",
    "em_search": "em_search_tables.py",
    "study": "results_tables.py",
    "results": "results_tables.py",
    "real": "real_tables.py",
}


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.M | re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def test_the_readme_is_at_most_250_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_python_block_runs(page, tmp_path, monkeypatch):
    """A page's blocks run in order in one namespace (like a notebook), in an empty folder that sees the
    repository's data/; a block marked with :data:`SKIP` is only compiled."""
    blocks = python_blocks(page)
    skipped = [b for b in blocks if b.startswith(SKIP)]
    assert len(skipped) == SKIPPED.get(page.name, 0), f"{page.name}: {len(skipped)} blocks marked {SKIP!r}"
    (tmp_path / "data").symlink_to(ROOT / "data")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for i, block in enumerate(blocks):
        code = compile(block, f"{page.name}, python block {i + 1}", "exec")
        if block not in skipped:
            exec(code, namespace)


def test_the_readme_example_runs_caft_and_its_variants():
    """The README's example trains, diffs and fine-tunes under each of zero / detached / grad_only."""
    namespace: dict = {}
    exec(python_blocks(ROOT / "README.md")[0], namespace)
    assert namespace["sub"].k == 2 and namespace["mode"] == "grad_only"
    assert 0 < float(namespace["explained"].sum()) <= 1


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        rel = file.relative_to(ROOT).as_posix() if file.is_relative_to(ROOT) else str(file)
        if not file.exists():
            broken.append(f"{target} (no {rel})")
            continue
        if anchor:
            headings = re.findall(r"^#+ (.+)$", file.read_text(), flags=re.M)
            if anchor not in {slug(h) for h in headings}:
                broken.append(f"{target} (no heading #{anchor} in {rel})")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_docs_results_holds_each_generated_block_once():
    text = (ROOT / "docs/results.md").read_text()
    for block in BLOCKS:
        assert text.count(f"<!-- {block}:begin -->") == text.count(f"<!-- {block}:end -->") == 1, block
    assert "<!--" not in (ROOT / "README.md").read_text()  # no generated block is left in the README


def test_make_writes_every_table_into_docs_results():
    make = ["make", "-n", "--no-print-directory", "study-tables", "real", "validity"]
    out = subprocess.run(make, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    lines = out.replace("\\\n", " ").splitlines()
    calls = [line for line in lines if "scripts/" in line and "_tables.py" in line]
    assert len(calls) == 3
    for call in calls:
        assert "--doc docs/results.md" in call and "README" not in call, call
        if "--block" in call:
            assert call.split("--block ")[1].split()[0] in BLOCKS


def test_a_table_script_replaces_its_block_of_the_page_and_nothing_else(tmp_path):
    page = tmp_path / "results.md"
    shutil.copy(ROOT / "docs/results.md", page)
    before = page.read_text()
    csvs = sorted(str(p) for p in (ROOT / "results/organism_search").glob("*.csv"))
    script = ROOT / "scripts/validity_tables.py"
    subprocess.run(
        [sys.executable, str(script), *csvs, "--out", str(tmp_path / "V.md"), "--doc", str(page)],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    after, table = page.read_text(), (tmp_path / "V.md").read_text()
    begin, end = "<!-- validity:begin -->", "<!-- validity:end -->"
    assert after.split(begin)[0] == before.split(begin)[0] and after.split(end)[1] == before.split(end)[1]
    assert table.strip() in after


def _is_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a name inside a module, not a submodule
        return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_caft_tl_path_and_name_the_page_gives_exists(page):
    """`caft_tl/x/y.py` is a file, `caft_tl.x.y.NAME` a module and its attribute (the old README named a
    `caft_tl/settings.py` that is `caft_tl/real/settings.py`)."""
    import importlib

    missing = []
    for name in sorted(set(re.findall(r"`(caft_tl[./][\w./]*)", page.read_text()))):
        if "/" in name:
            missing += [] if (ROOT / name).exists() else [name]
            continue
        parts, depth = name.split("."), 1
        while depth < len(parts) and _is_module(".".join(parts[: depth + 1])):
            depth += 1
        obj = importlib.import_module(".".join(parts[:depth]))
        for attr in parts[depth:]:
            if not hasattr(obj, attr):
                missing.append(name)
                break
            obj = getattr(obj, attr)
    assert not missing, f"{page.name} names {missing}"
