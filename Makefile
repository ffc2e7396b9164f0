# The commands the README shows and CI runs. Each creates .venv on first use.
# Every install goes through constraints.txt (exact versions; scripts/lock moves them),
# so the checks run against the same tools and libraries on every machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

.PHONY: install demo demo-reset test check bench clean lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(VENV)/.installed-local: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[local]'
	touch $@

install: $(VENV)/.installed-dev

demo: $(VENV)/.installed-local
	scripts/demo

# Forgets the demo's decisions, quarantine and caches; keeps demo-data/pictures.
demo-reset:
	rm -rf demo-data/decisions.sqlite3* demo-data/quarantine demo-data/storage demo-data/result

test: install
	scripts/install-system-packages
	$(BIN)/python -m pytest

check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# One benchmark, with the venv's python: `make bench SCRIPT=stores ARGS='--skip scale'`.
# SCRIPT is a file of benchmarks/, with or without its folder and .py (default: run, the
# figures against stock Thumbor).
SCRIPT ?= run
ARGS ?=
bench: install
	$(BIN)/python benchmarks/$(basename $(notdir $(SCRIPT))).py $(ARGS)

# Moves every pin to the newest release the ranges in pyproject.toml allow.
lock:
	scripts/lock

clean:
	rm -rf $(VENV) demo-data
