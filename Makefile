# Everything a fresh machine needs: `make test` and `make demo` create .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= test,frameworks,bench,lint
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: venv test demo bench bench-wrapt clean phoenix redis matrix test-slow ci lint dist foreign-suites

# Arize Phoenix, the real OTLP receiver of the end-to-end tests (tests/test_e2e_phoenix.py).
# Its dependency tree is huge and pins things gradio also pins: it gets its own venv,
# and the tests start $(PHOENIX_VENV)/bin/phoenix themselves.
PHOENIX_VENV  ?= .venv-phoenix
PHOENIX_SPEC  ?= arize-phoenix>=12,<21
PHOENIX_STAMP := $(PHOENIX_VENV)/.installed

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

$(PHOENIX_STAMP):
	$(PYTHON) -m venv $(PHOENIX_VENV)
	$(PHOENIX_VENV)/bin/python -m pip install -q --upgrade pip
	$(PHOENIX_VENV)/bin/python -m pip install -q '$(PHOENIX_SPEC)'
	touch $@

phoenix: $(PHOENIX_STAMP)

# Debian's redis-server: broker and result backend of the Celery runner tests, which start
# it on 127.0.0.1 themselves.  Installed when missing and possible (root, apt-get); else
# those tests are skipped with that reason.
redis:
	@command -v redis-server >/dev/null 2>&1 || test -x /usr/bin/redis-server || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get install -y -q redis-server >/dev/null; } || \
	  echo "redis-server is missing and cannot be installed here: the Celery runner tests will be skipped"

test: venv phoenix redis
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Big load counts and every stacking order too (what CI runs on the default Python).
test-slow: venv phoenix redis
	CTXRELAY_RUN_SLOW=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

# The suite (all but e2e; what needs a framework skips itself) on every CPython 3.10-3.13
# under pyenv, on wrapt 1.17 / 2.x and on CPython 3.14 / 3.14t (thread_inherit_context 0
# and 1; when ../shared/python is there), each in its own light venv (.venv-3.1x,
# .venv-wrapt1, .venv-wrapt2, .venv-3.14, .venv-3.14t): see .ci/run.
matrix:
	PYTHON=$(PYTHON) .ci/run matrix

# ruff (lint rules and formatting) and mypy, configured in pyproject.toml; CI fails on any
# finding.  `ruff format src tests benchmarks` and `ruff check --fix` repair most.
LINT_PATHS := src tests benchmarks
lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

# Everything CI runs: lint, test-slow, then matrix.
ci:
	PYTHON=$(PYTHON) .ci/run

# The same app twice: without ctxrelay (listeners lost in other threads), then with it
# (all there; the trace trees go to stderr at exit).  Ends by itself in a few seconds.
# `ctxrelay demo` runs the two (the app is the ctxrelay.demo_app module, in the wheel too).
demo: venv
	$(BIN)/ctxrelay demo

# A wheel in dist/ (or DIST=dir), for `pip install dist/ctxrelay-*.whl` in another
# project's environment.
DIST ?= dist
dist: venv
	rm -rf $(DIST)
	$(BIN)/python -m pip wheel -q --no-deps -w $(DIST) .
	@ls $(DIST)

bench: venv
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/processes.py

# Instructions per operation (callgrind: a noisy machine cannot move them) on wrapt 1.17
# and 2.x side by side: .venv-wrapt1 (built by `make matrix`) and .venv-wrapt2, or .venv
# (whose default install resolves wrapt 2.x) when there is no .venv-wrapt2.
WRAPT_VENVS := $(wildcard .venv-wrapt1/bin/python) \
	$(or $(wildcard .venv-wrapt2/bin/python),$(BIN)/python)
bench-wrapt: venv
	$(BIN)/python benchmarks/instructions.py $(addprefix --python ,$(WRAPT_VENVS)) \
		--only wrapper,closure,plain_call,pool_hop,thread,startup

# CPython's own thread/pool/asyncio/socketserver suites and anyio's and starlette's from
# their sdists, bare vs CTXRELAY_ENABLED=1 vs instrument() under a sampled root span
# (benchmarks/foreign_suites.py; docs/reliability.md). 30-40 minutes per Python; not part of `test`.
PY313 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python))
foreign-suites: venv
	$(BIN)/python -m pip install -q -e '.[foreign]'
	@if [ -n "$(PY313)" ] && [ ! -x .venv-3.13/bin/python ]; then \
		$(PY313) -m venv .venv-3.13 && .venv-3.13/bin/python -m pip install -q -e '.[test]'; fi
	$(BIN)/python benchmarks/foreign_suites.py $(FOREIGN_ARGS)

clean:
	rm -rf $(VENV) build dist .pytest_cache
