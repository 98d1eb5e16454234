# caft-tl: `make run` runs the whole notebook suite on the organism; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test lab clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

run: $(VENV)/.installed
	$(PY) -m caft_tl.suite --run-dir runs/default --fig-dir figures

test: $(VENV)/.installed
	$(PY) -m pytest -q

lab: $(VENV)/.installed
	$(VENV)/bin/jupyter lab notebooks

clean:
	rm -rf runs cache

# benchmarks (not part of `make test`): ratios → figures/benchmarks.csv; SUITE=1 also re-runs the suite
.PHONY: bench
bench: $(VENV)/.installed
	$(PY) -m benchmarks.run $(if $(SUITE),--suite)
