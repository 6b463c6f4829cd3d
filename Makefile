# Two promises (README, Quick start): `make run` and `make test` work on a fresh machine.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
CORES ?= all

.PHONY: setup run test lint

# The environment is rebuilt whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[test]'
	# llm-analysis (the roofline cross-check) pins transformers<5: take it without its pins
	$(PYTHON) -m pip install --quiet --no-deps 'llm-analysis==0.2.2'
	touch $@

setup: $(VENV)/.installed

## run: the default matrix (conf/matrix/default.yaml) -> results/default/cells.csv
run: setup
	$(VENV)/bin/snakemake --cores $(CORES)

## test: the whole test suite, real engines and real snakemake runs included
test: setup
	$(PYTHON) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakefmt --check Snakefile pipeline/rules
	$(VENV)/bin/snakemake --lint -d $$(mktemp -d)
