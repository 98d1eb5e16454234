"""The package's folders are the pipeline, and imports point down it (never back up, no cycles)."""

import ast
from pathlib import Path

import caft_tl

PACKAGE = Path(caft_tl.__file__).parent
#: the folders in pipeline order; a module may import from its own folder and the ones before it
LAYERS = (
    "core",
    "organism",
    "diffing",
    "directions",
    "interventions",
    "training",
    "evaluation",
    "real",
    "plotting",
    "runner",
)


def imported_folders(path: Path) -> set[str]:
    """The caft_tl folders a module imports from, anywhere in it (function-level imports too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("caft_tl"):
            parts = node.module.split(".")
            names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("caft_tl.")]
        out.update(names)
    return out


def test_every_module_lives_in_a_pipeline_folder():
    stray = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert not stray, f"modules outside the pipeline folders: {stray}"
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(
        LAYERS
    )


def test_imports_point_down_the_pipeline():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        folder = path.relative_to(PACKAGE).parts[0]
        if folder not in LAYERS:
            continue
        for target in imported_folders(path):
            if target not in LAYERS or LAYERS.index(target) > LAYERS.index(folder):
                wrong.append(f"{path.relative_to(PACKAGE)} imports caft_tl.{target}")
    assert not wrong, "imports against the pipeline order:\n" + "\n".join(sorted(wrong))


def test_chapters_that_read_no_model_do_not_import_transformer_lens():
    """`import transformer_lens` takes ~5 s (it imports transformers and datasets): chapters that open
    the task only (`setup(..., load="task")`) import their cells' caft_tl modules without it."""
    import re
    import subprocess
    import sys

    import nbformat

    for nb in sorted((Path(caft_tl.__file__).parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        source = "\n".join(
            c.source for c in nbformat.read(str(nb), as_version=4).cells if c.cell_type == "code"
        )
        if 'load="task"' not in source:
            continue
        imports = [
            line.split("#")[0].strip()
            for line in source.splitlines()
            if re.match(r"\s*(from|import) caft_tl", line)
        ]
        code = "\n".join(imports + ["import sys", "print('transformer_lens' in sys.modules)"])
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert out == "False", f"{nb.name}'s imports pull in transformer_lens"
