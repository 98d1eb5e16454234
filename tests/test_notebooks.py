"""Papermill smoke run of every chapter with the fast parameter set, and parameter checks."""

import csv
import itertools
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from caft_tl.core import files, results
from caft_tl.core.run_dir import RunDir
from caft_tl.evaluation import gates, population
from caft_tl.organism import TASKS, make_task, task_class
from caft_tl.runner import parameters, suite

SEEDS = [0, 1]  # a population of two tiny organisms per task


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """Every chapter on a population of two organisms of every task, with the fast parameters
    (the suite's two tasks and pronoun_profession, two organisms at a time)."""
    tmp = tmp_path_factory.mktemp("fast_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAFT_TL_CACHE", str(tmp / "cache"))
        timings = suite.run_tasks(
            list(TASKS),
            tmp / "run",
            tmp / "figures",
            fast=True,
            progress=False,
            workers=2,
            pretrain_seeds=SEEDS,
        )
    return tmp / "run", tmp / "figures", timings


def test_every_chapter_runs_every_task_with_fast_parameters(fast_run):
    run_dir, fig_dir, timings = fast_run
    tasks = list(TASKS)
    names = [nb.stem for nb in suite.chapters()]
    assert len(names) == 11 and names[-4:] == [
        "07_gates",
        "08_questions",
        "09_route_around",
        "10_iterated_caft",
    ]
    assert list(timings) == [
        f"{t}/seed{s}/{n}"
        for t in tasks
        for s in SEEDS
        for n in names
        if task_class(t).has_gates or n != "07_gates"
    ]  # chapter 07: spurious-correlation tasks only
    assert {t for t in tasks if not task_class(t).has_gates} == {"persona_em", "em_two_routes"}
    for task in tasks:
        for s in SEEDS:
            for name in [n for n in names if task_class(task).has_gates or n != "07_gates"]:
                assert (run_dir / task / f"seed{s}" / "notebooks" / f"{name}.ipynb").exists()
    assert (run_dir / "pronoun_profession" / "seed1" / "gates.json").exists()
    rows = list(csv.DictReader(open(fig_dir / "results.csv")))  # every task's rows
    assert {r["task"] for r in rows} == set(tasks) and len({r["organism"] for r in rows}) == len(tasks) * len(
        SEEDS
    )
    assert tuple(rows[0]) == results.COLUMNS
    methods = {(r["task"], r["method"], r["directions"]) for r in rows}
    for task in suite.TASKS:
        for expected in [
            ("base", "none"),
            ("plain", "none"),
            ("zero", "pca"),
            ("zero", "topk_pca"),
            ("zero", "random"),
            ("zero", "oracle"),
            ("zero", "sae"),
            ("zero", "topk_sae"),
            ("zero", "random_sae"),
            ("zero", "noninterp_pca"),
            ("interpretation", "pca"),
            ("interpretation", "sae"),
        ]:
            assert (task, *expected) in methods
        null = {
            r["directions"]
            for r in rows
            if r["task"] == task and r["method"] == "zero" and r["directions"].startswith("random/")
        }
        assert len(null) >= 20  # the null distribution, one seed per draw
        assert {r["metric"] for r in rows if r["task"] == task and r["method"] == "interpretation"} >= {
            "precision",
            "oracle_span",
            "n_chosen",
            "fallback",
        }
    assert ("persona_em", "fewer_examples", "none") in methods
    assert {r["seed"] for r in rows if r["method"] == "plain"} == {"0", "1"}
    dmc = {
        (r["method"], r["directions"], r["param"], r["trained"], r["split"])
        for r in rows
        if r["task"] == "double_mc"
    }
    assert {
        ("plain", "none", "", "True", "ood_spurious_first"),
        ("zero", "oracle", "", "True", "ood"),
        ("zero", "oracle", "", "False", "single_spurious"),
        ("zero", "pca", "", "True", "ood"),
    } <= dmc
    assert {r["metric"] for r in rows if r["task"] == "double_mc" and r["method"] == "plain"} == {
        "accuracy",
        "coherence",
    }
    gates_json = files.read_json(run_dir / "double_mc" / "seed0" / "gates.json")
    assert set(gates_json["validity"]) == {
        "V1_base",
        "V2_plain_learns_spurious",
        "V3_oracle_removes_spurious",
        "valid",
    }
    assert set(gates_json["outcomes"]) == {"oracle_caft_raises_ood", "pca_beats_topk_and_random"}
    for task in tasks:
        for fig in [
            "00_base_organism",
            "01_plain_finetune",
            "02_sae_quality",
            "03_sae_concept_scores",
            "04_sae_latent_check",
            "05_caft",
            "06_tradeoff",
            "03_interpretation",
            "05_null",
        ]:
            assert (fig_dir / task / "seed1" / f"{fig}.html").stat().st_size > 1000
        assert "06_tradeoff" in (fig_dir / task / "seed0" / "README.md").read_text()
    assert (fig_dir / "double_mc" / "seed0" / "07_pca.html").exists()
    from caft_tl.evaluation import population_analyses as pa

    for (
        task
    ) in tasks:  # chapters 05-06's per-organism analyses, and the suite's files over the valid organisms
        for s in SEEDS:
            assert (fig_dir / task / f"seed{s}" / pa.NULL_FILE).exists() and (
                fig_dir / task / f"seed{s}" / pa.CURVE_FILE
            ).exists()
        em = make_task(task).metric(make_task(task).ood_split) == pa.EM_METRIC
        assert (
            (fig_dir / task / f"seed{SEEDS[0]}" / pa.REDUCTION_FILE).exists()
            == em
            == (task in ("persona_em", "em_two_routes"))
        )
        for name in (
            pa.NULL_SUMMARY_FILE,
            pa.REDUCTION_SUMMARY_FILE,
            pa.CURVE_SUMMARY_FILE,
            pa.COVERAGE_FILE,
        ):
            assert (fig_dir / task / name).exists(), (task, name)
    provenance = files.read_json(run_dir / "double_mc" / "seed1" / "provenance.json")
    assert provenance["fast"] and provenance["chapters"] == names and provenance["packages"]["papermill"]
    assert provenance["parameters"]["00_organism"] == {"pretrain_steps": 150, "task": "double_mc", "seed": 1}
    # chapter 00 builds the task's architecture (model_cfg None → the task's) with the rate decay it asks for
    em = files.read_json(run_dir / "em_two_routes" / "seed0" / "organism" / "config.json")
    assert em["model"]["d_model"] == make_task("em_two_routes").defaults["model_cfg"]["d_model"] == 128
    assert em["meta"]["spec"]["pretrain"]["decay"] == 0.5
    assert (
        "decay"
        not in files.read_json(run_dir / "double_mc" / "seed0" / "organism" / "config.json")["meta"]["spec"][
            "pretrain"
        ]
    )


def test_the_chapters_numbers_agree_with_each_other(fast_run):
    """Each chapter's rows are there, with the run's organism; the summary is the mean of the rows;
    the gates written by chapter 07 are the verdicts recomputed from the rows."""
    run_dir, fig_dir, _ = fast_run
    for task, s in itertools.product(TASKS, SEEDS):
        run = RunDir(run_dir / task / f"seed{s}")
        table = run.read_results()
        assert set(table["organism"]) == {run.organism_id} and run.organism_spec()["pretrain"]["seed"] == s
        for method, trained in [
            ("base", False),
            ("plain", True),
            ("zero", False),
            ("mean", False),
            ("zero", True),
            ("grad_only", True),
        ]:
            assert len(results.select(table, method=method, trained=trained)), (
                task,
                method,
                trained,
            )  # chapters 01, 04, 05
        summary = pd.read_csv(fig_dir / task / f"seed{s}" / "results_summary.csv", keep_default_na=False)
        compared = results.comparison(table, make_task(task).metrics)
        means = compared.groupby(["method", "directions", "param", "split", "metric"])["value"].mean()
        got = summary.set_index(["method", "directions", "param", "split", "metric"])["mean"]
        assert len(got) == len(means) and (got.sort_index() - means.sort_index()).abs().max() < 1e-12
        if task_class(task).has_gates:
            written = files.read_json(run.path("gates"))
            assert json.loads(json.dumps(gates.validity(table))) == written["validity"]
            assert json.loads(json.dumps(gates.outcomes(table))) == written["outcomes"]


def test_the_population_is_summarised_over_valid_organisms(fast_run):
    """Per task: every organism's validity, and the summary's means are the means over the valid
    organisms of each organism's mean over fine-tuning seeds."""
    run_dir, fig_dir, _ = fast_run
    for task in TASKS:
        verdicts = pd.read_csv(fig_dir / task / population.VALIDITY_FILE)
        assert sorted(verdicts["pretrain_seed"]) == SEEDS and verdicts["valid"].dtype == bool
        if task == "em_two_routes":  # E1–E4, measured on each organism by the population summary
            assert {"E1_base_inference", "E2_separable", "E3_robust_em", "E4_separation_reachable"} <= set(
                verdicts.columns
            )
            for s in SEEDS:
                written = files.read_json(run_dir / task / f"seed{s}" / "em_gates.json")
                assert written["budget"]["n_disambiguating"] == 1200 and set(written["verdicts"]) >= {
                    "E1_base_inference",
                    "valid",
                }
            assert not verdicts["valid"].any()  # 150 pre-training steps make no valid organism
        elif not task_class(task).has_gates:
            assert verdicts["valid"].all()
        valid = set(verdicts.loc[verdicts["valid"], "organism"])
        summary = pd.read_csv(fig_dir / task / population.SUMMARY_FILE, keep_default_na=False)
        table = pd.concat([RunDir(run_dir / task / f"seed{s}").read_results() for s in SEEDS])
        plain = results.select(
            results.comparison(table, make_task(task).metrics),
            method="plain",
            split=make_task(task).ood_split,
        )
        per_org = (
            plain[plain["organism"].isin(valid)]
            .groupby(["organism", "metric"])["value"]
            .mean()
            .groupby("metric")
            .mean()
        )
        plain_ood = summary[(summary["method"] == "plain") & (summary["split"] == make_task(task).ood_split)]
        assert not valid or population.COHERENCE in set(
            plain_ood["metric"]
        )  # each rate's coherence beside it
        got = plain_ood[plain_ood["metric"].isin(make_task(task).metrics)].set_index("metric")["mean"]
        assert len(got) == len(per_org) and (
            not valid or (got.sort_index() - per_org.sort_index()).abs().max() < 1e-12
        )
        assert set(summary["n_organisms"]) <= {len(valid)} and (
            valid or summary.empty
        )  # no valid organism: no comparison


def test_chapter_09_diffs_the_kept_caft_models_at_every_residual_hook(fast_run):
    """Chapter 05 keeps the weights of CAFT on ``pca`` and ``oracle`` at the first seed only; chapter 09
    diffs them at every residual hook, marks the hooks each set ablates and writes its table and figures."""
    from caft_tl.evaluation import leakage
    from caft_tl.interventions.intervention import Intervention

    run_dir, fig_dir, timings = fast_run
    for task, s in itertools.product(TASKS, SEEDS):
        run = RunDir(run_dir / task / f"seed{s}")
        table = pd.read_csv(run.require("leakage"), keep_default_na=False, na_values=[""])
        assert tuple(table.columns) == leakage.COLUMNS and list(table["directions"].unique()) == [
            "pca",
            "oracle",
        ]
        n_layers = files.read_json(run.require("organism", file="config.json"))["model"]["n_layers"]
        stream = ["blocks.0.hook_resid_pre"] + [
            f"blocks.{l}.hook_resid_{p}" for l in range(n_layers) for p in ("mid", "post")
        ]
        for name, t in table.groupby("directions"):
            iv = Intervention.load(run.path("subspaces", name))
            assert list(t["hook"].unique()) == leakage.diffed_hooks(stream, {name: iv.subspaces})
            assert set(t.loc[t["ablated"], "hook"]) == set(iv.hook_names)
            share = t.loc[t["ablated"], "energy_in_subspace"]
            assert share.between(0, 1).all() and t.loc[~t["ablated"], "energy_in_subspace"].isna().all()
            assert set(t["concept"]) == set(task_class(task).CONCEPTS)
            assert t.loc[t["method"] == "zero", "recovered_share"].notna().any()
        ft_seeds = files.read_json(run.require("finetune_config"))["seeds"]
        assert len(ft_seeds) > 1
        kept = [(d, seed) for d in ("pca", "oracle", "random") for seed in ft_seeds]
        assert [
            (d, seed)
            for d, seed in kept
            if (run.finetune("zero", d, "", seed) / "model.safetensors").exists()
        ] == [("pca", ft_seeds[0]), ("oracle", ft_seeds[0])]
        for fig in ("09_energy_in_subspace", "09_concept_shift"):
            assert (fig_dir / task / f"seed{s}" / f"{fig}.html").stat().st_size > 1000
    print(
        "chapter 09 seconds per organism:",
        {k: round(v, 1) for k, v in timings.items() if k.endswith("09_route_around")},
    )


def test_chapter_10_iterates_from_chapter_05s_caft_and_trains_longer(fast_run):
    """Chapter 10 (fast: 2 rounds, 1× and 2×): round 1 is chapter 05's CAFT rows read back, both arms
    exist for every later round it ran at equal rank, and the 1× length rows are chapters 01/05's."""
    from caft_tl.evaluation import iterated

    run_dir, fig_dir, _ = fast_run
    for task, s in itertools.product(TASKS, SEEDS):
        run = RunDir(run_dir / task / f"seed{s}")
        table = run.read_results()
        table = table[table["trained"].astype(str).str.lower() == "true"]  # not chapter 04's base checks
        rows = files.read_csv(run.require("iterated"))
        one = rows[rows["round"] == 1]
        caft = table[(table["method"] == "zero") & (table["directions"] == "pca") & (table["param"] == "")]
        for arm in (iterated.INTERPRETED, iterated.CONTROL):
            got = one[one["arm"] == arm].sort_values(["seed", "split", "metric"])["value"].to_numpy()
            want = caft.sort_values(["seed", "split", "metric"])["value"].to_numpy()
            assert got == pytest.approx(want, abs=1e-9)
        later = rows[rows["round"] > 1]
        assert later.groupby("round")["arm"].nunique().eq(2).all()
        assert later.groupby(["round", "arm"])["rank"].first().unstack().nunique(axis=1).eq(1).all()
        lengths = files.read_csv(run.require("training_length"))
        assert sorted(lengths["length"].unique()) == [1, 2]
        plain_1x = lengths[(lengths["length"] == 1) & (lengths["method"] == "plain")]
        plain = table[(table["method"] == "plain") & (table["param"] == "")]
        assert sorted(plain_1x["value"]) == pytest.approx(sorted(plain["value"]), abs=1e-9)
        assert (fig_dir / task / f"seed{s}" / "10_training_length.html").exists()


def test_a_new_chapter_is_one_notebook(fast_run, tmp_path):
    """A chapter 11 dropped next to the others runs for every task with no other change: it opens
    with ``setup``, reads artefacts through the run directory and writes a figure."""
    import nbformat

    run_dir, fig_dir, _ = fast_run
    for nb in suite.chapters():
        (tmp_path / nb.name).symlink_to(nb)
    stub = nbformat.v4.new_notebook()
    stub.cells = [
        nbformat.v4.new_code_cell(
            'run_dir = "../runs/default/persona_em"\nfig_dir = "../figures/persona_em"',
            metadata={"tags": ["parameters"]},
        ),
        nbformat.v4.new_code_cell(
            "from caft_tl.runner.chapter import setup\nrun, world, _ = setup(globals(), load='task')\n"
            "from caft_tl.core import files\n"
            "files.write_json(run / 'chapter08.json', {'rows': len(run.read_results()), 'task': world.name})"
        ),
    ]
    stub.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    nbformat.write(stub, str(tmp_path / "11_stub.ipynb"))
    assert [nb.stem for nb, _ in suite.plan(params={"task": "persona_em"}, notebook_dir=tmp_path)][
        -1
    ] == "11_stub"
    suite.run_tasks(
        ["persona_em", "double_mc"],
        run_dir,
        fig_dir,
        only=["11"],
        progress=False,
        notebook_dir=tmp_path,
        pretrain_seeds=[0],
    )
    for task in ("persona_em", "double_mc"):
        run = RunDir(run_dir / task / "seed0")
        assert files.read_json(run / "chapter08.json") == {"rows": len(run.read_results()), "task": task}


def test_tasks_are_chosen_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"unknown task 'persona'; valid: persona_em, double_mc"):
        suite.run_tasks(["persona"], tmp_path, tmp_path)
    with pytest.raises(ValueError, match="choose tasks with --tasks"):
        suite.run_tasks(["double_mc"], tmp_path, tmp_path, params={"task": "double_mc"})
    with pytest.raises(ValueError, match="choose organisms with --pretrain-seeds"):
        suite.run_tasks(["double_mc"], tmp_path, tmp_path, params={"seed": 3})
    with pytest.raises(ValueError, match=r"pretrain_seeds = \[-1\]; expected a non-empty list"):
        suite.run_tasks(["double_mc"], tmp_path, tmp_path, pretrain_seeds=[-1])
    with pytest.raises(
        ValueError, match=r"unknown double_mc design parameter\(s\) \['topic'\]; valid: intended, spurious"
    ):
        suite.run_tasks(["double_mc"], tmp_path, tmp_path, params={"task_cfg": {"topic": "x"}})
    assert [nb.stem[:2] for nb, _ in suite.plan(params={"task": "persona_em"})] == [
        "00",
        "01",
        "02",
        "03",
        "04",
        "05",
        "06",
        "08",
        "09",
        "10",
    ]
    assert [nb.stem for nb, _ in suite.plan(params={"task": "double_mc"})][-4:] == [
        "07_gates",
        "08_questions",
        "09_route_around",
        "10_iterated_caft",
    ]
    assert not list(tmp_path.iterdir())


def test_unknown_parameter_is_refused_before_running(tmp_path):
    with pytest.raises(ValueError, match=r"unknown parameter 'sedes'; valid: .*seeds"):
        suite.run(tmp_path, tmp_path, params={"sedes": [0]})
    assert not (tmp_path / "notebooks").exists()


def test_fast_set_applies_only_where_a_chapter_declares_it(tmp_path):
    steps = suite.plan(only=["01", "06"], fast=True, params={"lr": 5e-4})
    assert [nb.stem for nb, _ in steps] == ["01_plain_finetune", "06_figures"]
    assert steps[0][1] == {
        "seeds": [0, 1],
        "n_examples": 320,
        "fewer_examples": [96],
        "kl_betas": [1.0],
        "lr": 5e-4,
    }
    assert steps[1][1] == {}
    with pytest.raises(ValueError, match="unknown parameter 'n_examples'"):
        suite.run(tmp_path, tmp_path, only=["06"], fast=True, params={"n_examples": 10})
    assert not (tmp_path / "notebooks").exists()


def test_ill_typed_parameter_is_refused(tmp_path):
    with pytest.raises(TypeError, match=r"parameter 'lr' = 'fast' is str; expected float"):
        suite.run(tmp_path, tmp_path, params={"lr": "fast"})
    with pytest.raises(ValueError, match="unknown chapter"):
        suite.run(tmp_path, tmp_path, only=["99"])


def test_a_chapter_without_its_upstream_artefacts_names_the_chapter_to_run(tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="run 00_organism first"):
        suite.run(tmp_path / "empty", tmp_path / "figs", only=["02"], progress=False)


def test_a_partial_run_updates_only_its_chapters_timings(tmp_path, monkeypatch):
    monkeypatch.setattr(suite.papermill, "execute_notebook", lambda *a, **k: None)
    files.write_json(tmp_path / "timings.json", {"00_organism": 20.0, "01_plain_finetune": 30.0})
    suite.run(tmp_path, tmp_path / "figures", only=["01"], progress=False)
    timings = files.read_json(tmp_path / "timings.json")
    assert list(timings) == ["00_organism", "01_plain_finetune"]
    assert timings["00_organism"] == 20.0 and timings["01_plain_finetune"] < 30.0


def test_papermill_reads_every_declared_parameter():
    """papermill's own inspector (``papermill --help-notebook``) must see each parameter line;
    a comment holding ``=`` hides a line from it."""
    from papermill.translators import PythonTranslator

    for nb in suite.chapters() + [suite.NOTEBOOK_DIR / "real" / "real_model.ipynb"]:
        seen = {p.name for p in PythonTranslator.inspect({"source": _parameters_source(nb)})}
        assert seen == set(parameters.declared(nb)), nb.name


def _parameters_source(notebook) -> str:
    import nbformat

    cell = next(
        c
        for c in nbformat.read(str(notebook), as_version=4).cells
        if "parameters" in c.metadata.get("tags", [])
    )
    return cell.source


def test_tasks_run_at_once_in_their_own_processes(tmp_path, monkeypatch):
    def fake_execute(nb, out, parameters, **kw):  # records which process ran which task's chapter
        task = Path(parameters["run_dir"]).parent.name
        key = results.RowKey(task, f"{task}-s0-abcdef", "plain", param=Path(nb).stem, seed=os.getpid())
        results.append(
            Path(parameters["run_dir"]) / "results.csv", results.rows(key, {"ood": {"accuracy": 1.0}})
        )

    monkeypatch.setattr(suite.papermill, "execute_notebook", fake_execute)
    timings = suite.run_tasks(
        suite.TASKS,
        tmp_path / "run",
        tmp_path / "figures",
        only=["00", "01"],
        progress=False,
        workers=2,
        pretrain_seeds=[0],
    )
    assert list(timings) == [
        f"{t}/seed0/{c}" for t in suite.TASKS for c in ("00_organism", "01_plain_finetune")
    ]
    call = files.read_json(tmp_path / "run" / "suite.json")
    assert (
        call["tasks"] == list(suite.TASKS)
        and call["task_cfg"] == {}
        and call["workers"] == 2
        and 0 < call["wall_s"] <= call["chapters_s"] + 5
    )
    rows = list(csv.DictReader(open(tmp_path / "figures" / "results.csv")))
    assert {r["task"] for r in rows} == set(suite.TASKS)
    by_task = {t: {r["seed"] for r in rows if r["task"] == t} for t in suite.TASKS}
    assert (
        all(len(p) == 1 for p in by_task.values()) and len(set.union(*by_task.values())) == 2
    )  # one process per task
    assert str(os.getpid()) not in set.union(*by_task.values())
    with pytest.raises(ValueError, match="workers = 0"):
        suite.run_tasks(suite.TASKS, tmp_path, tmp_path, workers=0)


def test_result_tables_are_generated_from_the_population_files(fast_run, tmp_path):
    """scripts/results_tables.py: a table per task with its organisms and share valid, written from the
    files, with the commit and machine; the README block between the markers is replaced."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "results_tables", Path(__file__).parents[1] / "scripts" / "results_tables.py"
    )
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    run_dir, fig_dir, _ = fast_run
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{tables.BEGIN}\nSTALE BLOCK\n{tables.END}\ntail\n")
    assert (
        tables.main(
            [
                str(fig_dir),
                "--run-dir",
                str(run_dir),
                "--out",
                str(tmp_path / "TABLES.md"),
                "--readme",
                str(readme),
            ]
        )
        == 0
    )
    text = (tmp_path / "TABLES.md").read_text()
    assert (
        text.startswith("Generated by `scripts/results_tables.py`")
        and "commit" in text
        and "CPU cores" in text
    )
    for task in TASKS:
        verdicts = pd.read_csv(fig_dir / task / population.VALIDITY_FILE)
        assert f"### `{task}`: {len(verdicts)} organisms, {int(verdicts['valid'].sum())} valid" in text
    assert (
        "STALE BLOCK" not in readme.read_text()
        and readme.read_text().endswith("tail\n")
        and text in readme.read_text()
    )
    assert "| coherence (code_heldout · chat) |" in text  # each rate's coherence beside it
    assert (
        "| directions | precision | recall | oracle span | chosen | fallback |" in text
    )  # chapter 03's interpreter, scored
    assert "Chapter 09 — share of the diff's energy" in text and "Chapter 10 — iterated CAFT" in text
    assert "Chapter 10 — training length" in text
    assert tables.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "x.md")]) == 2
    # the population PNGs copied beside a doc and embedded from it, every link resolving
    import re

    from caft_tl.plotting import figures

    doc = tmp_path / "docs" / "results.md"
    doc.parent.mkdir()
    doc.write_text(f"{tables.BEGIN}\n{tables.END}\n")
    args = [str(fig_dir), "--run-dir", str(run_dir), "--out", str(tmp_path / "T.md"), "--doc", str(doc)]
    assert tables.main([*args, "--figures-to", str(tmp_path / "docs" / "figures")]) == 0
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", doc.read_text())
    assert all((doc.parent / link).is_file() for link in links)
    if figures.chrome_path():  # PNGs are drawn only with a browser
        assert any("population_headline.png" in link for link in links)


def test_notebooks_are_committed_clean_with_cell_ids():
    """No outputs or execution counts in the repository's notebooks, a unique id on every cell
    (nbformat warns now and will refuse later), and one cell tagged ``parameters``."""
    import json

    root = Path(__file__).resolve().parents[1] / "notebooks"
    books = sorted(root.glob("*.ipynb")) + sorted(root.glob("real/*.ipynb"))
    assert len(books) >= 10
    for book in books:
        nb = json.loads(book.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), (
            f"{book.name} has outputs"
        )
        ids = [c.get("id") for c in nb["cells"]]
        assert None not in ids and len(set(ids)) == len(ids), f"{book.name}: cells without a unique id"
        assert sum("parameters" in c.get("metadata", {}).get("tags", []) for c in code) == 1, book.name
