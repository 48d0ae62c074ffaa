# The two commands a new user needs: `make up` and `make test` (see README.md).
#   make up      venv from requirements.lock if missing, then the whole local stack in the background
#   make test    the test suite (it starts its own services on free loopback ports)
#   make down / make status / make bench / make clean
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch's CPU build (torch==2.13.0+cpu in the lock file) is on PyTorch's index, not on PyPI. That
# index is asked for torch alone, once, before the rest (where a wheel folder in pip's config
# already has torch, the lookup fails fast and the local wheel is used). TORCH_INDEX= skips it.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PYTEST_ARGS ?=

.PHONY: install up down status test bench clean

# A venv from the committed, fully pinned lock file; redone when the lock file changes.
$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (set PYTHON=...)")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-deps --retries 0 --timeout 15 "$$(grep '^torch==' requirements.lock)" \
		$(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

up: install
	$(PY) -m devstack up

down:
	@if [ -x $(PY) ]; then $(PY) -m devstack down; fi

status: install
	@$(PY) -m devstack status

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) -m bench

clean: down
	rm -rf .stack
