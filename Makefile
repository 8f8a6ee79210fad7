# The compendium's two jobs. Each creates a virtual environment (.venv) with what it needs.
#   make demo   - the demo reproduction: papermill chain -> runs/demo/, figures -> figures/
#   make test   - the tests: pytest (package, physics validation, smoke chain, notebooks)
#
# TORCH_SPEC is the PyTorch requirement installed before the package. The default is the
# CPU build used on the compendium's reference machine; on a GPU box use e.g.
#   make demo TORCH_SPEC=torch
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PROFILE ?= demo
BIN := $(VENV)/bin

.PHONY: demo test paper bench clean-runs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.ctdose-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

# the tests and benchmarks also take the optional ompMC (GPL-3.0, from PyPI, never vendored) for
# the interop test and the side-by-side MC benchmark; where it cannot be installed they skip it
$(VENV)/.ctdose-interop: $(VENV)/.ctdose-installed
	$(BIN)/python -m pip install --quiet -e ".[test,interop]" || echo "ompmc not installed: its interop test and benchmark rows are skipped"
	touch $@

demo: $(VENV)/.ctdose-installed
	$(BIN)/ctdose run --profile $(PROFILE)

paper: $(VENV)/.ctdose-installed
	$(BIN)/ctdose run --profile paper

test: $(VENV)/.ctdose-interop
	$(BIN)/python -m pytest

bench: $(VENV)/.ctdose-interop
	$(BIN)/python benchmarks/run.py

clean-runs:
	rm -rf runs/
