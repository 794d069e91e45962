# hitstream — two commands for a new machine:
#   make demo   set up (CPU serving deps) and run the end-to-end demo
#   make test   set up (everything) and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: browser system-test-deps demo test lint format default-model bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# serving only: no TensorFlow
$(VENV)/.stamp-serve: pyproject.toml | $(PY)
	$(PIP) install -q -e ".[cpu]"
	touch $@

# training, tests and tools
$(VENV)/.stamp-all: pyproject.toml | $(PY)
	$(PIP) install -q -e ".[cpu,train,dev]"
	touch $@ $(VENV)/.stamp-serve

demo: $(VENV)/.stamp-serve
	$(VENV)/bin/streamer demo --out demo-out

# Debian packages the tests use: headless Chromium + chromedriver (browser tests of the web
# pages), promtool (from prometheus: checks the shipped Prometheus config and alert rules)
# and Node.js (syntax check of the pages' JavaScript)
browser: system-test-deps
system-test-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$SUDO apt-get install -y -qq $$missing; fi

test: $(VENV)/.stamp-all system-test-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q

lint: $(VENV)/.stamp-all
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(VENV)/.stamp-all
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# the shipped default bundle, reproducibly (≈ minutes on 2 CPU cores)
default-model: $(VENV)/.stamp-all
	$(VENV)/bin/trainer build-default --out models/default --force

bench: $(VENV)/.stamp-all
	$(PY) bench/run_all.py

clean:
	rm -rf demo-out .pytest_cache .ruff_cache
