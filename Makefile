# Set-up commands: `make run` (the built-in benchmark with every method) and `make test` (the test suite).
# torch/torchvision are pinned through constraints.txt (pyproject keeps ranges).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test mutants clean-results

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

# Mutation testing, on demand (not in CI): `make mutants` mutates methods/, baselines/, benchmark/peft/ and the
# metrics, streams and results modules; `make mutants MUTANTS='benchmark.metrics*'` restricts it to matching mutants.
# Each mutant runs only the tests that cover it (mutmut's own test selection); results stay in mutants/.
MUTANTS ?=
mutants: install
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,mutation]'
	$(BIN)/mutmut run --max-children $$(nproc) $(MUTANTS) || true
	$(BIN)/python tests/mutation_report.py

clean-results:
	rm -rf results/*/ results/tables results/plots
