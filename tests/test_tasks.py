"""The task interface the chapters read: every registered task offers it, and chapter
parameters left at None take the task's values."""

import pandas as pd
import pytest

from caft_tl.core import files, models
from caft_tl.evaluation import gates
from caft_tl.organism import TASKS, load_run_task, make_task, task_class
from caft_tl.runner import parameters, suite
from caft_tl.training.pretrain import export_organism


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_offers_the_interface(name):
    task = make_task(name, {"n_eval": 40} if name != "persona_em" else None)
    assert task.name == name
    assert {task.id_split, task.ood_split} <= set(task.eval_splits)
    assert {task.target_concept, task.avoid_concept} == set(task.CONCEPTS)
    assert {task.metric(s) for s in task.eval_splits} == set(task.metrics)
    assert set(task.axis_titles) == {task.id_split, task.ood_split}
    assert set(task.report) == {"title", "x_title", "reference"}
    model = models.build_model(models.ModelConfig(n_ctx=max(models.ModelConfig.n_ctx, task.seq_len)), len(task.vocab), seed=0)
    for hook in task.defaults["hooks"]:
        models.check_hook_names(model, hook)
    docs = task.sample_documents(5, __import__("torch").Generator().manual_seed(0))
    assert len(task.document_kinds(docs)) == 5
    report = task.base_report(model)
    assert list(report.columns) == ["condition", "split", "metric", "model", "reference"]
    assert report["model"].between(0, 1).all() and report["reference"].between(0, 1).all()


def test_none_parameters_take_the_tasks_values():
    ns = {"n_examples": None, "lr": 1e-3, "target": None, "avoid": "", "hooks": ["blocks.0.hook_resid_post"], "unrelated": None}
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
    models.save_model(model, folder, models.ModelConfig(n_ctx=task.seq_len), {"spec": {"task": "double_mc", "task_cfg": {"n_eval": 40}}})
    export_organism(tmp_path / "run", model, folder)
    assert load_run_task(tmp_path / "run").cfg == task.cfg
    with pytest.raises(files.MissingArtefactError, match="run 00_organism first"):
        load_run_task(tmp_path / "other")


def test_gates_refuse_a_task_without_them():
    with pytest.raises(ValueError, match=r"spurious-correlation task; 'persona_em' is not one \(valid: double_mc"):
        gates.check_task(make_task("persona_em"))
    gates.check_task(make_task("double_mc"))


def test_every_tasks_rows_are_gathered(tmp_path):
    row = dict(zip(files.RESULT_COLUMNS, ["persona_em", "plain", "none", "", 0, "chat", "misalignment_rate", 0.8]))
    files.append_results(tmp_path / "run" / "persona_em" / "results.csv", [row])
    files.append_results(tmp_path / "run" / "double_mc" / "results.csv", [{**row, "task": "double_mc", "split": "ood", "metric": "accuracy"}])
    out = suite.gather_results(tmp_path / "run", tmp_path / "figures")
    table = pd.read_csv(out, keep_default_na=False)
    assert sorted(table["task"]) == ["double_mc", "persona_em"] and list(table.columns) == list(files.RESULT_COLUMNS)
    with pytest.raises(files.MissingArtefactError, match="no task results"):
        suite.gather_results(tmp_path / "empty", tmp_path / "figures")
