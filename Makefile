# The two commands a new user needs: `make up` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install up down status test bench clean

# A venv from the committed, fully pinned lock file; redone when the lock file changes.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

up: install
	$(PY) -m devstack up

down:
	@test -x $(PY) && $(PY) -m devstack down || true

status: install
	$(PY) -m devstack status

test: install
	$(PY) -m pytest

bench: install
	$(PY) -m bench

clean: down
	rm -rf .stack
