# Set-up commands: `make run` (the built-in benchmark with every method) and `make test` (the test suite).
# torch/torchvision are pinned through constraints.txt (pyproject keeps ranges).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test clean-results

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,ray]'
	touch $(STAMP)

run: install
	$(BIN)/bench run
	$(BIN)/bench table --paper
	$(BIN)/bench plot

test: install
	$(BIN)/python -m pytest

clean-results:
	rm -rf results/*/ results/tables results/plots
