"""The first cell of every chapter: :func:`setup`."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from caft_tl.core.models import set_cpu_threads
from caft_tl.core.run_dir import RunDir
from caft_tl.organism import load_run_organism, load_run_task, task_class
from caft_tl.runner import parameters

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


class Chapter(NamedTuple):
    """What a chapter works with: its run directory, the organism's task and (unless asked not to
    load it) the base model."""

    run: RunDir
    task: object
    base: HookedTransformer | None


def setup(namespace: dict, load: str = "organism") -> Chapter:
    """Open a chapter from its ``parameters`` (the notebook's ``globals()``): refuse parameters the
    chapter does not declare or of the wrong type, use one torch thread, load chapter 00's organism
    from ``run_dir`` (``load="organism"``: model and task; ``"task"``: the task only; ``"none"``:
    neither, for chapter 00, which makes the organism of its ``task`` parameter), and fill the
    parameters left at ``None`` from the task's defaults."""
    if load not in ("organism", "task", "none"):
        raise ValueError(f"load={load!r}; valid: organism, task, none")
    parameters.check_notebook(namespace)
    set_cpu_threads()
    run = RunDir(namespace["run_dir"]).mark()  # artefacts written under it get checksums
    if load == "organism":
        base, task = load_run_organism(run)
    else:
        base, task = None, load_run_task(run) if load == "task" else None
    parameters.use_task_defaults(namespace, task or task_class(namespace["task"]))
    return Chapter(run, task, base)
