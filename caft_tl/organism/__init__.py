"""Model organisms: synthetic worlds with planted, known concepts.

Every task offers the interface the chapters read: ``name``, ``vocab``, ``eval_splits``,
``metric(split)``, ``label_answers`` (the ground-truth judge), ``sample_documents``,
``finetune_dataset``, ``eval_prompts``, ``document_kinds``, ``CONCEPTS``; ``id_split`` (the
fine-tuned behaviour on unseen prompts) and ``ood_split`` (its generalisation CAFT should change),
``target_concept`` / ``avoid_concept`` (chapter 03's rule), ``metrics``, ``axis_titles``,
``base_report(model)`` with its ``report`` titles (chapter 00) and ``defaults`` (chapter parameters left at ``None``).
"""

from caft_tl.organism.double_mc import DoubleMC, DoubleMCConfig
from caft_tl.organism.persona_em import PersonaEM, PersonaEMConfig
from caft_tl.organism.pronoun_profession import PronounProfession, PronounProfessionConfig

#: task name -> (generator class, config class)
TASKS = {"persona_em": (PersonaEM, PersonaEMConfig), "double_mc": (DoubleMC, DoubleMCConfig),
         "pronoun_profession": (PronounProfession, PronounProfessionConfig)}


def task_class(name: str) -> type:
    """The generator class of a registered task; a clear error for an unknown name."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name][0]


def make_task(name: str, cfg=None):
    """Build a task generator by name (``cfg`` a config dataclass, a dict, or None for defaults)."""
    cls, cfg_cls = task_class(name), TASKS[name][1]
    if isinstance(cfg, dict):
        cfg = cfg_cls(**cfg)
    return cls(cfg or cfg_cls())


def load_run_task(run_dir):
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
