# Two entry points for a fresh CPU machine (see README):
#   make repro   set everything up, then run the whole DVC pipeline on the embedded sample
#                (and paste the generated results table into README.md)
#   make test    set everything up, then run the test suite (notebooks included)
# Both create .venv from the pinned requirements.txt the first time (and again when the
# pins change); nothing else on the machine is touched.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export OMP_NUM_THREADS ?= 2
export PYDEVD_DISABLE_FILE_VALIDATION := 1
export IPYTHONDIR := $(CURDIR)/.ipython

.PHONY: setup repro test bench clean-venv

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . || \
	  $(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mssdf)" >/dev/null
	touch $@

setup: $(STAMP)
	$(BIN)/python -m mssdf.data.fetch --out data/raw

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/python -m mssdf.reports.readme  # README's results table from reports/paper/results.md

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

bench: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/bench_masking.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/bench_step.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/bench_loading.py

clean-venv:
	rm -rf $(VENV)
