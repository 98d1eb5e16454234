"""Model organisms: synthetic worlds with planted, known concepts.

Every task is a :class:`~caft_tl.organism.task.Task` (the interface the chapters read), registered
by name with its config dataclass in ``TASKS`` (:func:`register_task`).
"""

import dataclasses
from collections.abc import Callable

from caft_tl.organism.double_mc import DoubleMC, DoubleMCConfig
from caft_tl.organism.em_two_routes import EMTwoRoutes, EMTwoRoutesConfig
from caft_tl.organism.persona_em import PersonaEM, PersonaEMConfig
from caft_tl.organism.pronoun_profession import PronounProfession, PronounProfessionConfig
from caft_tl.organism.task import Task

#: task name -> (Task subclass, config class)
TASKS: dict[str, tuple[type[Task], type]] = {}


def register_task(name: str, config_class: type) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: register a :class:`Task` subclass whose ``name`` is ``name``, built from a
    ``config_class`` instance. Registering a name twice is an error."""

    def register(cls: type[Task]) -> type[Task]:
        if name in TASKS:
            raise ValueError(f"task {name!r} is already registered (as {TASKS[name][0].__name__})")
        if not (isinstance(cls, type) and issubclass(cls, Task) and cls.name == name):
            raise ValueError(
                f"task {name!r} must be registered with a Task subclass named {name!r}, got {cls!r}"
            )
        TASKS[name] = (cls, config_class)
        return cls

    return register


register_task("persona_em", PersonaEMConfig)(PersonaEM)
register_task("double_mc", DoubleMCConfig)(DoubleMC)
register_task("pronoun_profession", PronounProfessionConfig)(PronounProfession)
register_task("em_two_routes", EMTwoRoutesConfig)(EMTwoRoutes)


def task_class(name: str) -> type[Task]:
    """The Task subclass of a registered task; a clear error for an unknown name."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name][0]


def make_task(name: str, cfg=None) -> Task:
    """Build a task by name (``cfg`` a config dataclass, a dict, or None for defaults)."""
    cls, cfg_cls = task_class(name), TASKS[name][1]
    if isinstance(cfg, dict):
        fields = [f.name for f in dataclasses.fields(cfg_cls)]
        unknown = [k for k in cfg if k not in fields]
        if unknown:
            raise ValueError(f"unknown {name} design parameter(s) {unknown}; valid: {', '.join(fields)}")
        cfg = cfg_cls(**cfg)
    return cls(cfg or cfg_cls())


def load_run_task(run_dir) -> Task:
    """The task of the organism in ``run_dir/organism`` (chapter 00), without loading the model."""
    from caft_tl.core.run_dir import RunDir

    spec = RunDir(run_dir).organism_spec()
    return make_task(spec["task"], spec["task_cfg"])


def load_run_organism(run_dir):
    """(model, task) saved in ``run_dir/organism`` by chapter 00."""
    from caft_tl.core import models
    from caft_tl.core.run_dir import RunDir

    folder = RunDir(run_dir).require("organism", file="model.safetensors")
    model, meta = models.load_model(folder.parent)
    spec = meta["spec"]
    return model, make_task(spec["task"], spec["task_cfg"])
