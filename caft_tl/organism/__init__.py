"""Model organisms: synthetic worlds with planted, known concepts."""

from caft_tl.organism.double_mc import DoubleMC, DoubleMCConfig
from caft_tl.organism.persona_em import PersonaEM, PersonaEMConfig
from caft_tl.organism.pronoun_profession import PronounProfession, PronounProfessionConfig

#: task name -> (generator class, config class)
TASKS = {"persona_em": (PersonaEM, PersonaEMConfig), "double_mc": (DoubleMC, DoubleMCConfig),
         "pronoun_profession": (PronounProfession, PronounProfessionConfig)}


def make_task(name: str, cfg=None):
    """Build a task generator by name (``cfg`` a config dataclass, a dict, or None for defaults)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    cls, cfg_cls = TASKS[name]
    if isinstance(cfg, dict):
        cfg = cfg_cls(**cfg)
    return cls(cfg or cfg_cls())


def load_run_organism(run_dir):
    """(model, task) saved in ``run_dir/organism`` by chapter 00."""
    from caft_tl import models, runs

    folder = runs.require(run_dir, "organism/model.safetensors", "organism")
    model, meta = models.load_model(folder.parent)
    spec = meta["spec"]
    return model, make_task(spec["task"], spec["task_cfg"])
