"""The first cell of every chapter: :func:`setup`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple

from caft_tl.core.models import set_cpu_threads
from caft_tl.core.run_dir import RunDir
from caft_tl.core.world import World
from caft_tl.organism import TASKS, load_run_organism, load_run_task, task_class
from caft_tl.real.world import load_real_run, read_spec
from caft_tl.runner import parameters

if TYPE_CHECKING:
    import torch


class Chapter(NamedTuple):
    """What a chapter works with: its run directory, the task's world and (unless asked not to
    load it) the base model (an organism, or a real model seen with its LoRA adapters off)."""

    run: RunDir
    task: World | None
    base: torch.nn.Module | None


def studies_real_model(task: str, model: str) -> bool:
    """Whether chapter 00's ``task`` is a real task (a card's name or file) rather than an organism
    task (:data:`caft_tl.organism.TASKS`, pre-trained here, so ``model`` must be empty).

    Example:
        >>> studies_real_model("em_advice", "smollm2-135m"), studies_real_model("double_mc", "")
        (True, False)
    """
    if task not in TASKS:
        return True
    if model:
        raise ValueError(
            f"model = {model!r} with organism task {task!r}: an organism is pre-trained here; "
            "give model only with a real task (a card's name or file)"
        )
    return False


def setup(namespace: dict, load: str = "organism") -> Chapter:
    """Open a chapter from its ``parameters`` (the notebook's ``globals()``): refuse parameters the
    chapter does not declare or of the wrong type, use one torch thread (a real model: every core),
    load chapter 00's model and world from ``run_dir`` (``load="organism"``: model and world;
    ``"task"``: the world only, though a real world loads its model for the tokenizer; ``"none"``:
    neither, for chapter 00, which makes the model of its ``task`` parameter), and fill the
    parameters left at ``None`` from the world's defaults."""
    if load not in ("organism", "task", "none"):
        raise ValueError(f"load={load!r}; valid: organism, task, none")
    parameters.check_notebook(namespace)
    run = RunDir(namespace["run_dir"]).mark()  # artefacts written under it get checksums
    spec = read_spec(run) if load != "none" else None
    set_cpu_threads((os.cpu_count() or 1) if spec is not None else 1)  # one large model: every core
    if spec is not None:
        base, world = load_real_run(spec)
        base = base if load == "organism" else None
    elif load == "organism":
        base, world = load_run_organism(run)
    else:
        base, world = None, load_run_task(run) if load == "task" else None
    if world is not None or namespace.get("task") in TASKS:
        parameters.use_task_defaults(namespace, world or task_class(namespace["task"]))
    return Chapter(run, world, base)
