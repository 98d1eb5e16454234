"""Notebook parameters: what a chapter declares, and refusing what it does not.

Papermill only *warns* about a parameter the notebook does not declare; caft-tl refuses it, a
value whose type (or list elements' type) differs from the default's, and a count, seed or rate
out of range (:func:`check`), both from the suite (before anything runs) and inside a notebook
run by papermill directly (first cell after ``parameters``).
"""

from __future__ import annotations

import ast
import math
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
                raise ValueError(
                    f"parameter {node.targets[0].id!r} = {ast.unparse(node.value)} is not a literal"
                ) from None
    return out


def declared(notebook: str | Path) -> dict[str, object]:
    """Name → default of a notebook's cell tagged ``parameters``."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return _literal_assignments(cell.source)
    raise ValueError(f"notebook {str(notebook)!r} has no cell tagged 'parameters'")


#: parameter names that are counts (must be >= 1, in a list every element too): ``n_*``, ``*_steps``,
#: these, and ``fewer_examples``' sizes
COUNTS = ("batch_size", "sae_k", "sae_expansion", "fewer_examples")
#: parameter names that are seeds (must be >= 0): ``seed``, ``seeds``, ``*_seed``
SEEDS = ("seed", "seeds")
#: parameter names that must be > 0
POSITIVE = ("lr",)


def check(given: dict[str, object], defaults: dict[str, object]) -> None:
    """Raise a one-line error naming the parameter on any of:

    * a name not in ``defaults``;
    * a value whose type differs from the default's (an int is accepted where a float is
      expected, a bool never as a number); for a ``None`` default ("the task's value"), the
      type of any registered task's value;
    * in a list, an element whose type differs from the default's elements, or an empty list
      where every default is a non-empty list;
    * a number out of range: NaN/inf anywhere; a count (:data:`COUNTS`, ``n_*``, ``*_steps``)
      below 1, a seed (:data:`SEEDS`, ``*_seed``) below 0, :data:`POSITIVE` names at or below 0.
    """
    for name, value in given.items():
        if name not in defaults:
            raise ValueError(f"unknown parameter {name!r}; valid: {', '.join(sorted(defaults))}")
        default = defaults[name]
        if value is None and default is None:
            continue
        examples = [default] if default is not None else _task_values(name)
        hint = " (None: the task's value)" if default is None else ""
        if examples and not any(_same_type(value, e) for e in examples):
            raise TypeError(
                f"parameter {name!r} = {value!r} is {type(value).__name__}; expected "
                f"{type(examples[0]).__name__} like {examples[0]!r}{hint}"
            )
        if isinstance(value, (list, tuple)):
            lists = [e for e in examples if isinstance(e, (list, tuple))]
            if lists and not value and all(lists):
                raise ValueError(
                    f"parameter {name!r} = {value!r} is empty; give at least one value like {lists[0]!r}"
                )
            elements = [x for e in lists for x in e]
            for i, x in enumerate(value):
                if elements and not any(_same_type(x, e) for e in elements):
                    raise TypeError(
                        f"parameter {name!r} = {value!r}: element {i} {x!r} is {type(x).__name__}; "
                        f"expected {type(elements[0]).__name__} like {elements[0]!r}"
                    )
                _check_range(name, x, f"parameter {name!r} = {value!r}: element {i} {x!r}")
        else:
            _check_range(name, value, f"parameter {name!r} = {value!r}")


def _check_range(name: str, x: object, what: str) -> None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return
    if isinstance(x, float) and not math.isfinite(x):
        raise ValueError(f"{what} is not a finite number")
    if name in COUNTS or name.startswith("n_") or name.endswith("_steps"):
        if x < 1:
            raise ValueError(f"{what} is below 1; {name} counts something, so it is at least 1")
    elif name in SEEDS or name.endswith("_seed"):
        if x < 0:
            raise ValueError(f"{what} is negative; seeds are >= 0")
    elif name in POSITIVE and x <= 0:
        raise ValueError(f"{what} is not positive; {name} must be > 0")


def _same_type(value: object, example: object) -> bool:
    if isinstance(value, bool) or isinstance(example, bool):
        return isinstance(value, bool) and isinstance(example, bool)
    return isinstance(value, type(example)) or (isinstance(example, float) and isinstance(value, int))


def _task_values(name: str) -> list:
    """Every registered task's value of a parameter that chapters leave at ``None``."""
    from caft_tl.organism import TASKS

    return [p[name] for cls, _ in TASKS.values() if name in (p := task_parameters(cls))]


def task_parameters(task) -> dict[str, object]:
    """The chapter parameter values a task (object or class) gives: its ``defaults``, and (a task
    with ground truth) ``target`` / ``avoid`` from its concepts."""
    from caft_tl.organism.task import HasGroundTruth

    if not issubclass(task if isinstance(task, type) else type(task), HasGroundTruth):
        return dict(task.defaults)
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
