# The two commands a new user needs: `make up` and `make test` (see README.md).
#   make up      venv from requirements.lock if missing, then the whole local stack in the background
#   make test    the test suite (it starts its own services on free loopback ports)
#   make down / make status / make bench / make clean / make lock (regenerate the lock files)
#   make client-params (the qlora command's copy of the training parameters)
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
# `make lock`: where uv finds torch's CPU build (PyTorch's page of torch files, or pip's local
# wheel folder where one is configured), the platform the lock is for, extra uv options
# (LOCK_ARGS=--upgrade-package NAME moves one package; every other version is kept).
TORCH_FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(TORCH_INDEX)/torch/)
LOCK_TARGET := --python-version 3.11.7 --python-platform x86_64-manylinux_2_28
LOCK_ARGS ?=

.PHONY: install up down status test test-slow bench clean lock client-params

# A venv from the committed lock file (every version pinned, every file hashed); redone when the
# lock file changes. torch alone first (its own index, see above), checked against the lock's hash.
# --no-deps: the lock is complete (uv resolved it), so pip installs exactly it and resolves nothing
# (pip 23's resolver refuses an extra such as celery[redis] in hash mode); `pip check` proves it whole.
$(STAMP): requirements.lock pyproject.toml client/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (set PYTHON=...)")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	awk '/^torch==/{p=1; print; next} p && /^ /{print; next} {p=0}' requirements.lock > $(VENV)/torch.lock
	$(PY) -m pip install -q --no-deps --require-hashes --retries 0 --timeout 15 -r $(VENV)/torch.lock \
		$(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip install -q --no-deps -e ./client
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

# requirements.lock (every extra, hashed) and requirements-api.lock (the `api` extra alone, at the
# same versions: the slim API image) from pyproject.toml, by uv (in the `dev` extra).
lock: install
	$(VENV)/bin/uv pip compile -q pyproject.toml --all-extras --generate-hashes $(LOCK_TARGET) \
		$(foreach f,$(TORCH_FIND_LINKS),--find-links $(f)) $(LOCK_ARGS) -o requirements.lock
	$(VENV)/bin/uv pip compile -q pyproject.toml --extra api --generate-hashes $(LOCK_TARGET) \
		--constraint requirements.lock -o requirements-api.lock

up: install
	$(PY) -m devstack up

# client/qlora_client/training_params.json: the training parameters' JSON schema, copied from
# training/params.py for `qlora train start` (the client does not import the service's code);
# tests/client/test_cli_offline.py fails when the copy drifts.
client-params: install
	$(PY) client/tools/export_training_params.py

down:
	@if [ -x $(PY) ]; then $(PY) -m devstack down; fi

status: install
	@$(PY) -m devstack status

# `make test`: every test but the longest end-to-end runs (marker `slow`), which `make test-slow`
# runs; CI (.ci/run) runs both. A -m in PYTEST_ARGS replaces the default selection.
test: install
	$(PY) -m pytest -m "not slow" --durations=15 $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -m slow --durations=15 $(PYTEST_ARGS)

# The generated parts of the documentation site (docs/): docs/openapi.json (the API's schema), the
# training parameter table and the `qlora` command reference, from the code. tests/docs fails when
# they are out of date, and runs Mintlify's checks of the site (docs/package-lock.json; npm ci once).
.PHONY: docs
docs: install
	$(PY) docs/scripts/generate.py

bench: install
	$(PY) -m bench

clean: down
	rm -rf .stack
