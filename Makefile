# Two commands from a fresh clone: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install tools dbt-venv quix-venv bench demo test unit integration up down status lint clean

$(STAMP): pyproject.toml schemas/_cformats.c schemas/_spans.c schemas/_cschema.c
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP)

# The whole pipeline on the embedded defaults (Tansu, gateway, flow, local lake, chdb, fakesnow, SQLite) with
# synthetic traffic from the client SDK; prints a summary and stops everything. DEMO_ARGS="--keep-running" keeps it.
DEMO_ARGS ?=
demo: install
	$(BIN)/headwater demo $(DEMO_ARGS)

# Debian packages the tests use besides the services: promtool (alert-rule tests) and jemalloc (the gateway's
# allocator). Installed once per machine.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
tools:
	@command -v promtool >/dev/null || { echo "installing Debian's prometheus package (for promtool)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq prometheus >/dev/null; }
	@ls /usr/lib/*-linux-gnu/libjemalloc.so.2 >/dev/null 2>&1 || { echo "installing Debian's libjemalloc2"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libjemalloc2 >/dev/null; }

# dbt has its own virtualenv: its pins would fight the pipeline's. The dbt tests run the project in dbt/ with it.
DBT_STAMP := .venv-dbt/.installed-stamp
$(DBT_STAMP): dbt/requirements.txt
	@test -x .venv-dbt/bin/python || $(PYTHON) -m venv .venv-dbt
	.venv-dbt/bin/python -m pip install --quiet --upgrade pip
	.venv-dbt/bin/python -m pip install --quiet -r dbt/requirements.txt
	@touch $@

dbt-venv: $(DBT_STAMP)

# quixstreams, the peer the flow is benchmarked against, pins confluent-kafka < 2.13 and pydantic < 2.14: it gets a
# virtualenv of its own with the project's other runtime dependencies and the project itself (no deps).
QUIX_STAMP := .venv-quix/.installed-stamp
$(QUIX_STAMP): pyproject.toml
	@test -x .venv-quix/bin/python || $(PYTHON) -m venv .venv-quix
	.venv-quix/bin/python -m pip install --quiet --upgrade pip
	.venv-quix/bin/python -m pip install --quiet "quixstreams==3.28.1" "pydantic==2.13.5" $$($(BIN)/python -c 'import tomllib; print(" ".join(d for d in tomllib.load(open("pyproject.toml","rb"))["project"]["dependencies"] if not d.startswith(("bytewax","confluent-kafka","pydantic"))))')
	.venv-quix/bin/python -m pip install --quiet --no-deps -e .
	@touch $@

quix-venv: $(QUIX_STAMP)

# Every benchmark against its ceiling and the quixstreams peer; writes bench/results/latest.{md,png} (< 10 min).
bench: install quix-venv
	$(BIN)/headwater devstack up
	$(BIN)/headwater bench all; rc=$$?; $(BIN)/headwater devstack down; exit $$rc

# Starts the real services, runs the whole suite against them, and stops what it started whatever the result.
test: install tools dbt-venv
	$(BIN)/headwater devstack up
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; $(BIN)/headwater devstack down; exit $$rc

unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

up: install
	$(BIN)/headwater devstack up

down:
	$(BIN)/headwater devstack down

status:
	$(BIN)/headwater devstack status

lint: install
	$(BIN)/headwater schemas lint

clean: down
	rm -rf var/devstack
