# Two commands on a fresh machine:  make demo [INPUT=clip]   and   make test
# Both create/refresh .venv from pyproject.toml + constraints.txt (tested pins) first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.gopflow-installed
INPUT  ?=
DEMO   ?= demo-output

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(PY) -m gopflow demo --out-dir $(DEMO) $(if $(INPUT),--input "$(INPUT)",)

test: setup
	$(PY) -m ruff check src tests bench
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench

bench: setup
	$(PY) bench/transcode.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache build src/*.egg-info
