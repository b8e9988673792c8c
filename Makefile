# Keyturn — every entry point a developer needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OPA ?= $(shell command -v opa 2>/dev/null || echo .cache/bin/opa)
PYTEST_ARGS ?=
# Test processes for make test, each with its own namespace and services; whole files go to one
# process (--dist loadfile) so module fixtures start once. Most of the suite waits on servers, so
# one process more than there are cores: on two cores, three kept them 89 % busy and ran the suite
# in 511 s, against 607 s with two.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc 2>/dev/null || echo 1) + 1 )))
CHAOS_RATE ?= 200
CHAOS_ACTIONS ?= 10000
# What set-up runs beside the OPA build at a lower priority: the type check and the collection
# pass. The build is the longest path to the first test (~190 CPU-s) and they took half the two
# cores from it; the venv's install and imports before them stay at full priority, or the type
# check, starved of its inputs, ended after the build (a clean clone's set-up: 224 s at equal
# priority, 220 s with everything but the build lowered, 177 s of it the build).
BACKGROUND := nice -n 10

.PHONY: help e2e-deps venv stack-install stack-up test-ready test-bytecode stack-down run test test-unit test-integration policy-check lint compose-check bench flood chaos chaos-short clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

# The venv is filled by uv (pinned below), which fetches and unpacks wheels in parallel: ~45 s
# from an empty cache where pip took ~150 s, which was most of a fresh clone's wait before the
# first test. Same pins (requirements.lock), same package set; pip does it instead where uv cannot
# be had or fails (PIP_FIND_LINKS is honoured by both, the HTTP timeout too).
# Bytecode is written by importing what is used (WARM_IMPORTS here, the test collection in
# `make test`), not compiled for every file installed: the services and the tests import about a
# third of the venv's 12,800 modules, and compiling all of them cost 74 CPU-s of a fresh clone's
# set-up, on the two cores the OPA build needs. Written once, so where PYTHONDONTWRITEBYTECODE is
# set (it is on our CI hosts) a service's start does not compile its imports again.
UV_VERSION ?= 0.13.8
comma := ,
UV := $(VENV)/bin/uv
define install_pinned
	$(PY) -m pip install -q uv==$(UV_VERSION) \
	&& UV_HTTP_TIMEOUT=$${PIP_DEFAULT_TIMEOUT:-180} $(UV) pip install --python $(PY) -q \
		$${PIP_FIND_LINKS:+--find-links "$$PIP_FIND_LINKS"} -c requirements.lock -e '.[$(1)]' \
	|| { echo "uv could not install; pip does"; $(PY) -m pip install -q --upgrade pip \
		&& $(PY) -m pip install -q -c requirements.lock -e '.[$(1)]'; }
	PYTHONDONTWRITEBYTECODE= $(PY) -c 'import $(WARM_IMPORTS)'
endef
WARM_IMPORTS := keyturn.cli, keyturn.intake.app, keyturn.policy.app, keyturn.approval.app, keyturn.executor.app, keyturn.audit.app

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(call install_pinned,dev$(comma)report)
	@touch $@

venv: $(STAMP)  ## create .venv with the pinned dependencies

stack-install:  ## fetch Kafka's jars, build OPA, find PostgreSQL (first time; cached in .cache); needs no venv
	deploy/stack.sh install

stack-up: venv stack-install  ## install (first time) and start Kafka, OPA and PostgreSQL on loopback
	deploy/stack.sh up

stack-down:  ## stop the servers started by stack-up
	deploy/stack.sh down

run: venv  ## start the whole system (servers + five services); Ctrl-C stops everything
	deploy/run.sh

policy-check: stack-up  ## opa fmt / check --strict / test --coverage >= 90% (and lint when available)
	deploy/opa.sh install  # the binary is needed even when KEYTURN_OPA_URL points at another server
	OPA=$(OPA) policies.rego/check.sh

lint: venv  ## ruff (lint rules and format check) over the Python, mypy over services/ (config: pyproject.toml)
	$(VENV)/bin/ruff check services tests bench examples
	$(VENV)/bin/ruff format --check services tests bench examples
	$(BACKGROUND) $(VENV)/bin/mypy

CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	NAME=e2e-deps && source deploy/lib.sh && debian_install chromium

e2e-deps: $(CHROMIUM)  ## Debian's Chromium for the console browser test (no browser download)

# What the tests need, prepared side by side: the venv's install, the servers' (an OPA build from a
# fresh clone is minutes of compiling) and the browser at once; then the gates and the servers' start.
test-ready: venv lint stack-up policy-check e2e-deps test-bytecode

# The bytecode of what the tests import, and pytest's rewritten test modules, written by collecting
# the suite once while the servers are prepared; each test process then reads them.
test-bytecode: venv
	PYTHONDONTWRITEBYTECODE= $(BACKGROUND) $(PY) -m pytest -q -p no:cacheprovider --collect-only tests >/dev/null

test:  ## everything CI runs: lint and type gates, policy checks, unit, integration, e2e tests
	$(MAKE) --no-print-directory -j4 test-ready
	@# bytecode written once: a run starts each service ~100 times, and where PYTHONDONTWRITEBYTECODE
	@# is set (it is on our CI hosts) every start compiled the whole package again
	$(PY) -m compileall -q services tests bench
	eval "$$(deploy/stack.sh env)" && $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-unit: venv  ## unit tests only (no servers)
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

$(VENV)/.bench-installed: $(STAMP)
	$(call install_pinned,dev$(comma)bench$(comma)report)
	@touch $@

bench: $(VENV)/.bench-installed  ## benchmark on a stack of its own (~9 min on 2 busy cores; BENCH_QUICK=1 ~4); bench/results/
	PYTHONPATH=services:. $(PY) -m bench.run

flood: $(VENV)/.bench-installed  ## one batched flood and where its CPU went (~2 min; FLOOD_PROFILE=1 adds py-spy); stack kept in .run/flood
	PYTHONPATH=services:. $(PY) -m bench.flood

chaos-short: venv  ## the short fault drill (~3 min) on a stack of its own
	KEYTURN_CHAOS=short $(PY) -m pytest -q -s -p no:cacheprovider tests/chaos/test_short_chaos.py $(PYTEST_ARGS)

chaos: venv  ## the long fault drill on a stack of its own (CHAOS_ACTIONS=10000 actions at CHAOS_RATE=200/s)
	KEYTURN_CHAOS=long KEYTURN_CHAOS_RATE=$(CHAOS_RATE) KEYTURN_CHAOS_ACTIONS=$(CHAOS_ACTIONS) $(PY) -m pytest -q -s -p no:cacheprovider tests/chaos/test_long_chaos.py $(PYTEST_ARGS)

compose-check:  ## validate docker-compose.yml
	docker-compose config -q

clean:  ## stop servers and remove runtime state (keeps the download cache)
	-deploy/stack.sh down
	rm -rf .run tests/artifacts
