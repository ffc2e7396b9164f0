# The commands the README shows and CI runs. Each creates .venv on first use.
# Every install goes through constraints.txt (exact versions; scripts/lock moves them),
# so the checks run against the same tools and libraries on every machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

.PHONY: install demo demo-reset test check bench clean lock release-check versions docs

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

# The suite on TEST_WORKERS workers, then the tests that assert a wall-clock bound alone,
# so that the other workers' load does not count against them.
TEST_WORKERS ?= 4

test: install
	scripts/install-system-packages
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m 'not timing'
	$(BIN)/python -m pytest -m timing

check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The documentation site (mkdocs.yml, docs/) into site/, every link and anchor checked.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Builds the sdist and wheel, twine-checks them, and runs Thumbor from the wheel alone.
release-check: install
	$(BIN)/python scripts/check_release.py

# The end-to-end tests on the oldest and newest supported Python and Thumbor (noxfile.py).
# Where pyenv manages the interpreters, every installed one is put on the shims' path.
versions: install
	scripts/install-system-packages
	PYENV_VERSION="$$(pyenv versions --bare 2>/dev/null | tr '\n' ':')$${PYENV_VERSION:-}" $(BIN)/nox

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
