# Hubbub: the few commands people type. See README.md.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SYSTEM_PACKAGES := redis-server chromium nginx nodejs podman runc mmdebstrap
PYTEST_ARGS ?=

.PHONY: run test check format image system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,webrtc]'
	touch $@ $(VENV)/.run-installed

## make run: create .venv, install Hubbub, serve on http://127.0.0.1:8000 (memory broker, demo pages)
run: $(VENV)/.run-installed
	$(BIN)/hubbub serve --host 127.0.0.1 --port 8000 --broker memory://

## make test: install test dependencies (Python and system) and run the whole suite
test: $(VENV)/.test-installed system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## make check: lint, format check and strict typing
check: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.test-installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## make image: build localhost/hubbub:latest with podman on a Debian base (docs/operations.md)
image:
	deploy/build-image.sh

## system-deps: redis-server, chromium, nginx, nodejs and, for the image tests, podman, runc and
## mmdebstrap from Debian when missing (one apt-get update)
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || missing="$$missing nginx"; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v podman >/dev/null 2>&1 || missing="$$missing podman"; \
	command -v runc >/dev/null 2>&1 || test -x /usr/sbin/runc || missing="$$missing runc"; \
	command -v mmdebstrap >/dev/null 2>&1 || missing="$$missing mmdebstrap"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts *.egg-info
