# The two commands for a new user are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
ENV := source scripts/env.sh

.PHONY: venv demo up test test-fast test-ui provision rehearsal soak clean

venv: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml images/worker/pyproject.toml
	@# bubblewrap isolates each local Batch job (docs/local-aws.md); Debian's package, installed here as root
	command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; }; }; } \
	  || echo "warning: bubblewrap is missing (apt-get install bubblewrap): local Batch jobs will run unisolated" >&2
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt -c constraints.txt
	touch $(STAMP)

## Start the local AWS endpoint, provision Batch, run the main DAG with `airflow dags test`, print its summary.
demo: $(STAMP)
	$(ENV) && exec scripts/demo.sh

## airflow standalone (web UI on http://localhost:8080) plus the local AWS endpoint; Ctrl-C stops both.
up: $(STAMP)
	$(ENV) && exec scripts/up.sh

## Apply config/batch_resources.json to the endpoint of the aws_default connection.
provision: $(STAMP)
	$(ENV) && python -m operators.kit.provisioning apply

## Production's topology (config/production.env) as local processes: PostgreSQL, FAB auth, S3 storage,
## deferrable waits; runs both DAGs through the REST API, checks them, stops everything (README).
rehearsal: $(STAMP)
	$(ENV) && exec scripts/rehearsal.sh

## make up on free ports under load at once: 20 triggered runs, REST and CLI backfills, a cleared failed
## shard, a killed triggerer, a stack restart mid-run; checks every run and Batch job, prints its figures
## (scripts/soak.py; about ten minutes here, five of them idle). SOAK_ARGS="--runs 5 --idle-seconds 30" for a
## short one; tests/scripts/test_soak.py runs a short one (`python -m pytest -m soak`), not part of make test.
soak: $(STAMP)
	$(ENV) && python scripts/soak.py $(SOAK_ARGS)

# tests/scripts/test_rehearsal.py runs make rehearsal's script (about ten minutes here), so it is left
# out: run it with `python -m pytest -m rehearsal tests/scripts/test_rehearsal.py`.
# The suite runs in TEST_WORKERS processes (pytest-xdist), each with its own Airflow home, SQLite DB and
# local endpoint (tests/conftest.py): most tests wait on processes more than they compute (a Batch job's
# sleep, a retry's delay, a stack's start), so workers beyond the cores fill the time those waits leave a
# core idle, until their own cost (each collects the suite, copies the DB and starts an endpoint) and the
# contention outweigh it. Quiet runs here, back to back on one machine: make test 8 min 44 s with 4 workers,
# 8 min 11 s with 5, 7 min 38 s with 6, 8 min 10 s with 8; make test-fast 1 min 40 s with 3 against 1 min 44 s
# with 4 and 1 min 52 s with 2.
# The longest tests start first; the tests that share a module's or a package's fixture go to one worker
# as one group (--dist loadgroup; tests/conftest.py names the groups), so a costly fixture is set up once,
# not once per worker. TEST_WORKERS=0 runs it in one process.
# The suite starts hundreds of interpreters that import the project: they keep its compiled bytecode
# (__pycache__, ignored by git) even where PYTHONDONTWRITEBYTECODE is set, or each would compile it again.
TEST_WORKERS ?= 6
FAST_TEST_WORKERS ?= 3
PYTEST := env -u PYTHONDONTWRITEBYTECODE python -m pytest -q --dist loadgroup --no-loadscope-reorder

test: $(STAMP)
	$(ENV) && $(PYTEST) -n $(TEST_WORKERS) -m "not rehearsal and not soak"

## The edit loop's subset: every test but the system tests (whole runs, stacks, benchmarks) and the slow ones
## (seconds of CPU each: many processes, a restart, a fresh interpreter per case), in parallel.
test-fast: $(STAMP)
	$(ENV) && $(PYTEST) -n $(FAST_TEST_WORKERS) -m "not system and not slow and not rehearsal and not soak"

## The browser test (tests/ui): Debian's Chromium (installed here when missing) through playwright against
## make up's stack on free ports; prints the folder of its screenshots. Not part of make test (minutes).
test-ui: $(STAMP)
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	  || { echo "make test-ui needs Debian's chromium: apt-get install chromium (as root)" >&2; exit 1; }
	$(ENV) && AIRBATCH_UI_TEST=1 AIRBATCH_CHROMIUM="$$(command -v chromium)" python -m pytest -q -s tests/ui

clean:
	rm -rf .airflow .data
