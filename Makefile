# `make demo` and `make test` each create the environment they need on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup-env.sh
	VENV=$(VENV) bash scripts/setup-env.sh
	touch $@

demo: setup
	$(PY) -m orthosae_plugin.demo

test: setup
	$(PY) -m pytest -q
