import pytest
import torch

from caft_tl.core import models
from caft_tl.organism import make_task
from caft_tl.training.pretrain import PretrainConfig, pretrain

TINY = models.ModelConfig(d_model=32, n_heads=2, d_head=16, d_mlp=64)

#: The fast lane (``pytest -m "not slow"``) leaves these out; each is marked ``slow`` here rather than
#: in its file, so the list is one place. Why each is slow (``--durations`` on 2 shared CPU cores):
SLOW = {
    # papermill: a Jupyter kernel per chapter
    "tests/test_notebooks.py::test_every_chapter_runs_every_task_with_fast_parameters": (
        "every chapter × task, minutes"
    ),
    "tests/test_notebooks.py::test_the_chapters_numbers_agree_with_each_other": (
        "reads the fast run of every chapter × task"
    ),
    "tests/test_notebooks.py::test_a_new_chapter_is_one_notebook": (
        "the fast run, then a stub chapter per task"
    ),
    "tests/test_notebooks.py::test_the_population_is_summarised_over_valid_organisms": (
        "reads the fast run of every chapter × task"
    ),
    "tests/test_notebooks.py::test_result_tables_are_generated_from_the_population_files": (
        "reads the fast run of every chapter × task"
    ),
    "tests/test_notebooks.py::test_chapter_09_diffs_the_kept_caft_models_at_every_residual_hook": (
        "reads the fast run of every chapter × task"
    ),
    "tests/test_notebooks.py::test_a_chapter_without_its_upstream_artefacts_names_the_chapter_to_run": (
        "a kernel, 9 s"
    ),
    "tests/reliability/test_failures.py::"
    "test_a_failing_chapter_prints_one_line_naming_the_chapter_and_the_notebook": (
        "the suite's CLI and a kernel, 35 s"
    ),
    "tests/reliability/test_parameters_and_provenance.py::"
    "test_suite_refuses_ill_typed_list_elements_before_anything_runs": (
        "the suite's CLI in a subprocess (imports), 20 s"
    ),
    "tests/test_real_notebook.py::test_chat_setting_with_lora_and_a_judge": (
        "the real-model notebook, minutes"
    ),
    "tests/test_real_notebook.py::test_mc_setting_full_finetune": "the real-model notebook, minutes",
    # process pools and Ray clusters running chapters
    "tests/test_sweep.py::test_local_sweep_runs_in_parallel_reports_failures_and_resumes": (
        "two pool workers run chapters"
    ),
    "tests/test_sweep.py::test_ray_backend_runs_each_set_as_a_task_on_a_two_node_cluster": (
        "starts a two-node Ray cluster"
    ),
    # browsers
    "tests/test_lab.py::test_chapter_00_renders_its_figure_in_jupyterlab": "JupyterLab + headless Chromium",
    "tests/test_plotting.py::test_static_formats_on_request": "kaleido starts Chromium",
    "tests/test_results_page.py::test_the_page_renders_every_figure_in_a_browser_without_script_errors": (
        "headless Chromium per figure, 20 s"
    ),
    # subprocess workers that pre-train and fine-tune
    "tests/reliability/test_resume.py::test_kill_9_mid_run_then_same_command_resumes": (
        "3 worker processes, 44 s"
    ),
    "tests/reliability/test_resume.py::test_same_seed_is_bit_identical_across_processes": (
        "2 worker processes, 42 s"
    ),
    "tests/reliability/test_memory.py::test_diffing_peak_memory_is_flat_in_dataset_size": (
        "2 worker processes, 16 s"
    ),
    "tests/reliability/test_interrupts.py::"
    "test_ctrl_c_during_a_finetune_then_the_same_command_resumes_with_identical_rows": (
        "the suite's CLI three times (chapters 00-01, fast): interrupted, resumed, uninterrupted; 3-7 min"
    ),
    # the real SmolLM2-135M (fetched from the package registry and converted once: about 1 min; then 5 s
    # to load)
    "tests/test_real_experiment.py::"
    "test_real_suite_on_a_tiny_checkpoint_writes_every_methods_rows_and_the_tables": (
        "two real-model chapters on a tiny checkpoint, 2.5 min"
    ),
    "tests/test_real_experiment.py::test_real_chapter_refuses_a_bad_parameter_inside_the_kernel": (
        "a kernel, 10 s"
    ),
    "tests/test_real_experiment.py::test_smollm2_gender_task_end_to_end": (
        "the real-model chapter on SmolLM2, minutes"
    ),
    "tests/test_offline_models.py::test_conversion_gives_a_normal_fp32_hf_folder": (
        "fetches and converts each offline model on first use (SmolLM2 1 min, Qwen2.5-Coder-0.5B 2-5 min)"
    ),
    "tests/test_offline_models.py::test_qwen_coder_bridge_equals_eager_hf_and_writes_fluent_code": (
        "Qwen2.5-Coder-0.5B on CPU: load twice, greedy answer, 1 min"
    ),
    "tests/test_offline_models.py::test_smollm2_answers_the_capital_of_france": (
        "SmolLM2 on CPU: load and sample, 15 s"
    ),
    "tests/test_offline_models.py::test_smollm2_batched_option_scores": "SmolLM2 on CPU: option scores, 10 s",
    "tests/test_real_cards.py::test_a_user_reference_card_runs_offline": (
        "the real chapter on a tiny checkpoint, 2.5 min"
    ),
    "tests/test_real_cards.py::test_a_judge_card_without_a_key_still_writes_answers": (
        "the real chapter on a tiny checkpoint, 2 min"
    ),
}


def pytest_collection_modifyitems(config, items):
    """Mark the tests of :data:`SLOW` (parametrized ones by their base name) ``slow``."""
    for item in items:
        if item.nodeid.split("[")[0] in SLOW:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def world():
    return make_task("persona_em")


@pytest.fixture(scope="session")
def tiny_model(world):
    """An untrained 2-layer organism-shaped model (d_model 32) for fast shape/hook tests."""
    torch.manual_seed(0)
    return models.build_model(TINY, len(world.vocab), seed=0, device="cpu")


@pytest.fixture(scope="session")
def persona_organism(world):
    """The tiny model pre-trained briefly on ``persona_em`` (300 steps, ~2 s; answer loss ~0.3)."""
    return pretrain(world, TINY, PretrainConfig(steps=300, batch_size=32), progress=False)[0]


@pytest.fixture(scope="session")
def double_mc_organism():
    """(model, task): the tiny model pre-trained briefly on ``double_mc`` (600 steps, ~5 s), enough for
    the sentiment words' class to be linearly readable from their embeddings."""
    task = make_task("double_mc")
    return pretrain(task, TINY, PretrainConfig(steps=600, batch_size=32), progress=False)[0], task


models.set_cpu_threads()
