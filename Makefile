# Set-up commands: `make run` (the built-in benchmark with every method) and `make test` (the test suite).
# torch/torchvision are pinned through constraints.txt (pyproject keeps ranges).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test mutants gpu-check clean-results

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,ray,tensorboard,mlflow,wandb]'
	touch $(STAMP)

run: install
	$(BIN)/bench run
	$(BIN)/bench table --paper
	$(BIN)/bench plot
	$(BIN)/bench report

test: install
	$(BIN)/python -m pytest

# Mutation testing, on demand (not in CI): `make mutants` mutates methods/, baselines/, benchmark/models/peft/ and the
# metrics, streams and results modules (~5,000 mutants, ~8 h on 2 cores); `make mutants SAMPLE=25` tests a seeded
# random sample of 25 per module (SEED=0) and reports over it; `make mutants MUTANTS='benchmark.reporting.metrics*'` tests the
# matching mutants. Each mutant runs only the tests that cover it (mutmut's own selection); results stay in mutants/.
# Never run `mutmut print-time-estimates` (mutmut 3.8 empties its coverage table when no mutants were generated).
MUTANTS ?=
SAMPLE ?=
SEED ?= 0
mutants: install
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,mutation]'
ifeq ($(SAMPLE),)
	$(BIN)/mutmut run --max-children $$(nproc) $(MUTANTS) || true
	$(BIN)/python tests/mutation_report.py
else
	$(BIN)/python tests/mutation_sample.py --generate --max-children $$(nproc)
	$(BIN)/mutmut run --max-children $$(nproc) $$($(BIN)/python tests/mutation_sample.py $(SAMPLE) --seed $(SEED)) || true
	$(BIN)/python tests/mutation_report.py --sample
endif

# On a CUDA machine (a few minutes): the CUDA tests, then each method's training and inference speed at ViT-B/16
# shapes (synthetic inputs, no weights), fp32 and bf16 side by side; tables on screen, JSON under results/speed/.
gpu-check: install
	$(BIN)/python -m pytest tests/test_cuda.py -q -rs
	$(BIN)/bench speed --device cuda --tasks 40 --batch-size 64
	$(BIN)/bench speed --train --device cuda --backbone vit_base_patch16_224.augreg_in21k --tasks 40 --batch-size 64 \
		--steps 5 --repeats 2

clean-results:
	rm -rf results/*/ results/tables results/plots results/report.html
