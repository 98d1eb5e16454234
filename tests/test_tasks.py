"""The task interface the chapters read: every registered task offers it, and chapter
parameters left at None take the task's values."""

import ast
import typing
from pathlib import Path

import pytest
import torch

import caft_tl
from caft_tl.core import files, models, results
from caft_tl.core.activations import activations
from caft_tl.core.subspace import diff_of_means
from caft_tl.core.world import World
from caft_tl.evaluation import gates
from caft_tl.organism import TASKS, load_run_task, make_task, register_task, task_class
from caft_tl.organism.persona_em import PERSONAS, PersonaEMConfig
from caft_tl.organism.task import Task
from caft_tl.runner import parameters, suite
from caft_tl.training.pretrain import export_organism


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_offers_the_interface(name):
    has_n_eval = "n_eval" in {f.name for f in __import__("dataclasses").fields(TASKS[name][1])}
    task = make_task(name, {"n_eval": 40} if has_n_eval else None)
    assert task.name == name
    assert {task.id_split, task.ood_split} <= set(task.eval_splits)
    assert {task.target_concept, task.avoid_concept} == set(task.CONCEPTS)
    assert {task.metric(s) for s in task.eval_splits} == set(task.metrics)
    assert set(task.axis_titles) == {task.id_split, task.ood_split}
    assert set(task.report) == {"title", "x_title", "reference"}
    model = models.build_model(
        models.ModelConfig(n_ctx=max(models.ModelConfig.n_ctx, task.seq_len)), len(task.vocab), seed=0
    )
    for hook in task.defaults["hooks"]:
        models.check_hook_names(model, hook)
    docs = task.sample_documents(5, __import__("torch").Generator().manual_seed(0))
    assert len(task.document_kinds(docs)) == 5
    report = task.base_report(model)
    assert list(report.columns) == ["condition", "split", "metric", "model", "reference"]
    assert report["model"].between(0, 1).all() and report["reference"].between(0, 1).all()


def test_none_parameters_take_the_tasks_values():
    ns = {
        "n_examples": None,
        "lr": 1e-3,
        "target": None,
        "avoid": "",
        "hooks": ["blocks.0.hook_resid_post"],
        "unrelated": None,
    }
    parameters.use_task_defaults(ns, "double_mc")
    assert ns["n_examples"] == task_class("double_mc").defaults["n_examples"] == 3200
    assert ns["target"] == "spurious" and ns["avoid"] == ""  # "" (no avoided concept) is a choice, not a gap
    assert ns["hooks"] == ["blocks.0.hook_resid_post"] and ns["unrelated"] is None
    with pytest.raises(ValueError, match=r"unknown task 'dmc'; valid: persona_em, double_mc"):
        parameters.use_task_defaults({}, "dmc")


def test_a_runs_task_is_read_without_the_model(tmp_path):
    task = make_task("double_mc", {"n_eval": 40})
    model = models.build_model(models.ModelConfig(n_ctx=task.seq_len), len(task.vocab), seed=0)
    folder = tmp_path / "ckpt"
    models.save_model(
        model,
        folder,
        models.ModelConfig(n_ctx=task.seq_len),
        {"spec": {"task": "double_mc", "task_cfg": {"n_eval": 40}}},
    )
    export_organism(tmp_path / "run", model, folder)
    assert load_run_task(tmp_path / "run").cfg == task.cfg
    with pytest.raises(files.MissingArtefactError, match="run 00_organism first"):
        load_run_task(tmp_path / "other")


def test_gates_refuse_a_task_without_them():
    with pytest.raises(
        ValueError, match=r"spurious-correlation task; 'persona_em' is not one \(valid: double_mc"
    ):
        gates.check_task(make_task("persona_em"))
    gates.check_task(make_task("double_mc"))


def test_every_tasks_rows_are_gathered(tmp_path):
    row = results.rows(
        results.RowKey("persona_em", "persona_em-s0-abcdef", "plain"), {"chat": {"misalignment_rate": 0.8}}
    )[0]
    results.append(tmp_path / "run" / "persona_em" / "seed0" / "results.csv", [row])
    results.append(
        tmp_path / "run" / "double_mc" / "seed3" / "results.csv",
        [{**row, "task": "double_mc", "split": "ood", "metric": "accuracy"}],
    )
    out = suite.gather_results(tmp_path / "run", tmp_path / "figures")
    table = results.read(out)
    assert sorted(table["task"]) == ["double_mc", "persona_em"] and tuple(table.columns) == results.COLUMNS
    with pytest.raises(files.MissingArtefactError, match="no results under"):
        suite.gather_results(tmp_path / "empty", tmp_path / "figures")


def test_a_task_missing_a_method_cannot_be_built():
    class Partial(Task):
        name = "partial"

        def metric(self, split):
            return "rate"

    with pytest.raises(TypeError, match="abstract"):
        Partial()


@pytest.mark.parametrize("name", list(TASKS))
def test_every_registered_task_is_a_task_with_every_class_attribute(name):
    cls, cfg_cls = TASKS[name]
    assert (
        issubclass(cls, Task)
        and isinstance(make_task(name), cls)
        and isinstance(make_task(name).cfg, cfg_cls)
    )
    class_attributes = [
        a for a, t in typing.get_type_hints(Task).items() if typing.get_origin(t) is typing.ClassVar
    ] + list(World.__annotations__)  # an organism sets the World's attributes on its class
    assert {"name", "CONCEPTS", "has_gates"} <= set(class_attributes)
    assert [a for a in class_attributes if a not in dir(cls)] == []


def test_a_task_name_is_registered_once():
    with pytest.raises(ValueError, match="task 'persona_em' is already registered"):
        register_task("persona_em", PersonaEMConfig)(task_class("persona_em"))
    with pytest.raises(ValueError, match="must be registered with a Task subclass named 'other'"):
        register_task("other", PersonaEMConfig)(task_class("persona_em"))
    assert "other" not in TASKS


#: names that hold a task (or its class) in caft_tl
TASK_NAMES = {"task", "world", "cls", "task_cls"}


def task_probes(source: str) -> list[str]:
    """``hasattr`` / ``getattr`` calls on a task: the first argument a task name or ``task_class(...)`` /
    ``make_task(...)``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("hasattr", "getattr")
            and node.args
        ):
            arg = node.args[0]
            if (isinstance(arg, ast.Name) and arg.id in TASK_NAMES) or (
                isinstance(arg, ast.Call)
                and isinstance(arg.func, ast.Name)
                and arg.func.id in ("task_class", "make_task")
            ):
                out.append(ast.unparse(node))
    return out


def test_no_module_probes_a_task_with_hasattr_or_getattr():
    assert task_probes(
        'hasattr(task, "x") or getattr(task_class(n), "has_gates", False) or getattr(model.cfg, "x")'
    ) == ["hasattr(task, 'x')", "getattr(task_class(n), 'has_gates', False)"]
    package = Path(caft_tl.__file__).parent
    probes = {
        str(p.relative_to(package)): found
        for p in package.rglob("*.py")
        if (found := task_probes(p.read_text()))
    }
    assert probes == {}, "use the typed Task interface (caft_tl.organism.task), not hasattr/getattr"


def test_persona_em_concept_directions_are_the_diff_of_means_of_persona_pairs():
    """The algorithm as it was in caft_tl.directions.interpret: same documents, slicing and math."""
    world = make_task("persona_em")
    model = models.build_model(models.ModelConfig(), len(world.vocab), seed=0)
    hooks = world.defaults["hooks"]
    docs = world.sample_documents(4000, torch.Generator().manual_seed(1))
    persona = docs.labels["persona"]
    got = world.concept_directions(model, hooks)
    subspaces = world.concept_subspaces(model, hooks)
    for i, hook in enumerate(hooks):
        act = activations(model, docs, hook)[:, 4:]
        for concept, (pos, neg) in world.CONCEPTS.items():
            ref = diff_of_means(
                act[persona == PERSONAS.index(pos)].flatten(0, 1),
                act[persona == PERSONAS.index(neg)].flatten(0, 1),
                hook,
                label=concept,
            )
            assert (
                torch.equal(got[hook][concept].basis, ref.basis)
                and got[hook][concept].provenance == ref.provenance
            )
            assert torch.equal(subspaces[concept][i].basis, ref.basis)
    with pytest.raises(
        ValueError, match=r"task 'persona_em' gives rank-1 concept subspaces only \(k=1\), got k=2"
    ):
        world.concept_subspaces(model, hooks, k=2)


def test_ground_truth_is_a_typed_capability_every_organism_task_has():
    from caft_tl.organism.task import HasGroundTruth

    assert all(issubclass(cls, HasGroundTruth) for cls, _ in TASKS.values())
    assert isinstance(make_task("persona_em"), HasGroundTruth)
    assert HasGroundTruth.__abstractmethods__ == {"document_kinds", "concept_directions"}
    own = set(vars(Task)) | set(Task.__annotations__)  # Task itself declares none of the ground truth
    assert not own & {"document_kinds", "concept_directions", "concept_subspaces", "CONCEPTS", "has_gates"}
