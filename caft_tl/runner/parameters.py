"""Notebook parameters: what a chapter declares, and refusing what it does not.

Papermill only *warns* about a parameter the notebook does not declare; caft-tl refuses it, and
a value whose type differs from the default's, both from the suite (before anything runs) and
inside a notebook run by papermill directly (first cell after ``parameters``).
"""

from __future__ import annotations

import ast
from pathlib import Path


def _literal_assignments(source: str) -> dict[str, object]:
    """``name = <literal>`` statements of a cell, as name → value; refuses a value that is not a
    literal (a parameter's default must be readable without running the notebook)."""
    out: dict[str, object] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                raise ValueError(f"parameter {node.targets[0].id!r} = {ast.unparse(node.value)} is not a literal") from None
    return out


def declared(notebook: str | Path) -> dict[str, object]:
    """Name → default of a notebook's cell tagged ``parameters``."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return _literal_assignments(cell.source)
    raise ValueError(f"notebook {str(notebook)!r} has no cell tagged 'parameters'")


def check(given: dict[str, object], defaults: dict[str, object]) -> None:
    """Raise on a name not in ``defaults`` or a value whose type differs from the default's
    (for a ``None`` default, "the task's value", from the type of any task's value)."""
    for name, value in given.items():
        if name not in defaults:
            raise ValueError(f"unknown parameter {name!r}; valid: {', '.join(sorted(defaults))}")
        default = defaults[name]
        examples = [default] if default is not None else _task_values(name) if value is not None else []
        if examples and not any(_same_type(value, e) for e in examples):
            hint = " (None: the task's value)" if default is None else ""
            raise TypeError(f"parameter {name!r} = {value!r} is {type(value).__name__}; expected {type(examples[0]).__name__} like {examples[0]!r}{hint}")


def _same_type(value: object, example: object) -> bool:
    return isinstance(value, type(example)) or (isinstance(example, float) and isinstance(value, int) and not isinstance(value, bool))


def _task_values(name: str) -> list:
    """Every registered task's value of a parameter that chapters leave at ``None``."""
    from caft_tl.organism import TASKS

    return [p[name] for cls, _ in TASKS.values() if name in (p := task_parameters(cls))]


def task_parameters(task) -> dict[str, object]:
    """The chapter parameter values a task (object or class) gives: its ``defaults``, and
    ``target`` / ``avoid`` from its concepts."""
    return {**task.defaults, "target": task.target_concept, "avoid": task.avoid_concept}


def check_notebook(namespace: dict) -> None:
    """Inside a kernel: compare papermill's injected cell (``# Parameters``) with the declared
    ``parameters`` cell executed just before it. Does nothing when no parameters were injected."""
    history = namespace.get("In") or []
    injected = [i for i, src in enumerate(history) if i > 0 and src.lstrip().startswith("# Parameters")]
    if injected:
        i = injected[-1]
        check(_literal_assignments(history[i]), _literal_assignments(history[i - 1]))


def use_task_defaults(namespace: dict, task) -> None:
    """Fill the chapter parameters left at ``None`` from the task (a task object, class or
    registry name): its ``defaults``, and ``target`` / ``avoid`` from its concepts. The same
    chapters run every task, each with its own budgets."""
    if isinstance(task, str):
        from caft_tl.organism import task_class

        task = task_class(task)
    for name, value in task_parameters(task).items():
        if name in namespace and namespace[name] is None:
            namespace[name] = value
