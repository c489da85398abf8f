# Hubbub: the few commands people type. See README.md.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SYSTEM_PACKAGES := redis-server chromium nginx nodejs podman runc mmdebstrap
PYTEST_ARGS ?=
LATEST ?= .venv-latest

.PHONY: run test test-latest check format image system-deps clean

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

## make test-latest: the same pytest run in .venv-latest, against the newest release of every runtime,
## test and webrtc dependency, Hubbub's own version bounds ignored (prints the key versions first)
test-latest: system-deps
	@# (bin/pip, not bin/python: a venv whose creation was interrupted has no pip yet; venv completes it)
	test -x $(LATEST)/bin/pip || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	$(LATEST)/bin/pip install -q --no-deps -e .
	$(LATEST)/bin/python -c "$$LATEST_REQUIREMENTS" > $(LATEST)/requirements.txt
	@# pip warns that these break Hubbub's own bounds: that is the point of this target
	$(LATEST)/bin/pip install -q --upgrade --upgrade-strategy eager -r $(LATEST)/requirements.txt
	@echo "newest releases installed:"
	@$(LATEST)/bin/pip freeze | grep -iE '^(starlette|uvicorn|websockets|redis|pyjwt|orjson|httpx|hypercorn|aiortc)=='
	$(LATEST)/bin/python -m pytest $(PYTEST_ARGS)

# The dependencies of test-latest by name alone, read from pyproject.toml so the list never goes
# stale: [project] dependencies plus the test and webrtc extras (what `make test` installs), each
# without its version specifiers but with its own extras and environment marker.
define LATEST_REQUIREMENTS
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
for req in project["dependencies"] + extras["test"] + extras["webrtc"]:
    spec, _, marker = req.partition(";")
    name = re.match(r"\s*[A-Za-z0-9][A-Za-z0-9._-]*(\[[^]]*\])?", spec).group(0).strip()
    print(name + ("; " + marker.strip() if marker.strip() else ""))
endef
export LATEST_REQUIREMENTS

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
	rm -rf $(VENV) $(LATEST) .pytest_cache .mypy_cache .ruff_cache test-artifacts *.egg-info
