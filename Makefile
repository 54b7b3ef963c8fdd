# Two commands on a fresh machine:  make demo [INPUT=clip]   and   make test
# Both create/refresh .venv from pyproject.toml + constraints.txt (tested pins) first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.gopflow-installed
INPUT  ?=
DEMO   ?= demo-output

BROWSER := tests/browser
PLAYERS := $(BROWSER)/node_modules/.package-lock.json

.PHONY: setup demo test lint bench clean browser-deps

setup: $(STAMP) browser-deps

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# The streaming-ladder browser test (tests/integration/test_ladder_browser.py) needs Debian's
# chromium and the hls.js/dash.js players from npm (versions in tests/browser/package-lock.json).
# Each is installed only when missing; where it cannot be, that test skips and says why.
browser-deps: $(PLAYERS)
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends chromium >/dev/null || echo "note: apt-get install chromium failed"; \
	  else echo "note: no chromium (as root: apt-get install chromium); the browser test will skip"; fi; }

$(PLAYERS): $(BROWSER)/package.json $(BROWSER)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends npm >/dev/null; } || echo "note: no npm; the browser test will skip"
	@! command -v npm >/dev/null 2>&1 || npm ci --prefix $(BROWSER) --no-audit --no-fund \
	  --loglevel=error || echo "note: npm ci failed; the browser test will skip"

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
