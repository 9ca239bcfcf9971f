# `make run` and `make test` each set up everything on a fresh machine:
# a .venv/ in the repo root, torch (the CPU 2.13.0 build when there is no
# CUDA), the project's dependencies, then run. `make run` installs what the
# server needs (with torchao for --quantize fp8 where there is a GPU);
# `make test` adds the test tools.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
CUDA = $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1 && echo 1)

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test bench load lint readme venv system-deps promtool clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(if $(CUDA),torch,torch==2.13.0)
	$(PY) -m pip install --quiet -e '.$(if $(CUDA),[fp8])'
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

# Without a GPU `make run` serves the demo model, and with it the tiny ControlNet, so
# the image tab's ControlNet can be tried; not when ARGS or the environment choose a
# model or a ControlNet themselves.
DEMO_ARGS = $(if $(or $(CUDA),$(ZIMAGE_MODEL),$(ZIMAGE_CONTROLNET),$(findstring --model,$(ARGS)),$(findstring --controlnet,$(ARGS))),,--controlnet tiny)

run: $(STAMP)
	$(PY) app.py $(DEMO_ARGS) $(ARGS)

# The tests run a real redis-server (also as Sentinel and Cluster nodes), a real
# nginx, a real headless Chromium and a real Squid (Debian packages), and lint
# /metrics with promtool.
system-deps: promtool
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	test -x /usr/sbin/nginx || missing="$$missing nginx"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	command -v squid >/dev/null 2>&1 || test -x /usr/sbin/squid || missing="$$missing squid"; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $$missing; fi

# promtool, the Prometheus metrics linter, taken out of Debian's prometheus package
# into /usr/local/bin without installing the package (which would add a system
# user and start a Prometheus server).
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
		set -e; tmp=$$(mktemp -d); chmod 755 $$tmp; cd $$tmp; \
		apt-get download prometheus 2>/dev/null || { $(SUDO) apt-get update -q && apt-get download prometheus; }; \
		dpkg-deb --fsys-tarfile prometheus_*.deb | tar -xO ./usr/bin/promtool > promtool; \
		$(SUDO) install -m 0755 promtool /usr/local/bin/promtool; \
		cd /; rm -rf $$tmp; promtool --version | head -1; }

# ruff, the import direction of docs/ARCHITECTURE.md (import-linter's contracts in
# pyproject.toml), and README's settings table against runtime/settings.py.
lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m runtime.settings_table --check

# Rewrite README's settings table from runtime/settings.py.
readme: $(STAMP)
	$(PY) -m runtime.settings_table

# The 20 slowest tests close the report: where the suite's time goes (issue 28).
test: lint system-deps
	$(PY) -m pytest --durations=20 $(PYTEST_ARGS)

# Cache and serving benchmark (docs/PERFORMANCE.md): a table, bench/results/*.json and a plot.
bench: $(VENV)/.bench system-deps
	$(PY) -m bench.serving $(BENCH_ARGS)

# 32 clients mixing hits and misses for 60 s (docs/RELIABILITY.md); exit 1 if a promise breaks.
load: $(STAMP)
	$(PY) -m bench.load $(LOAD_ARGS)

$(VENV)/.bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
