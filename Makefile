# Everything a fresh machine needs: `make test` and `make demo` create .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= test,frameworks,bench
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
comma  := ,

.PHONY: venv test demo bench clean phoenix

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

test: venv phoenix
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: venv
	$(BIN)/python examples/griptape_threads.py

bench: venv
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist .pytest_cache
