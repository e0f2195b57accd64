# Two commands set everything up on a fresh machine:
#   make serve   install into .venv and run the server with blueprints/ on the embedded store
#   make test    install into .venv (plus Graphviz and Chromium when possible), lint and run
#                every test
#   make cluster a local Redis Cluster to run the server on (REDIS_URL=redis+cluster://...)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

COMPAT := .venv-compat
COMPAT_STAMP := $(COMPAT)/.installed

.PHONY: serve test lint pytest graphviz chromium compat constraints clean cluster

# constraints.txt pins the versions the suite was last run with: without it pip's resolver
# backtracks through old moto/botocore releases for minutes and can end on one that no
# longer builds.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -c constraints.txt
	touch $(STAMP)

# After changing dependencies: install without the pins, run `make test`, then record.
constraints: $(STAMP)
	{ echo "# Versions the test suite was last run with; refresh with: make constraints"; \
	  $(BIN)/python -m pip freeze --exclude-editable; } > constraints.txt

# Development tokens, so the README's curl examples work as written; set your own in
# production (or leave them unset and the server generates and prints random ones).
CLIENT_TOKEN ?= dev-client-token
WORKER_TOKEN ?= dev-worker-token
export CLIENT_TOKEN WORKER_TOKEN

serve: $(STAMP)
	$(BIN)/interlock serve

graphviz:
	@scripts/ensure-graphviz

# A local Redis Cluster (3 masters + 3 replicas on ports 7101-7106) to try
# REDIS_URL=redis+cluster://... on; Ctrl-C stops it.
cluster: $(STAMP)
	$(BIN)/python scripts/local_cluster.py
chromium:
	@scripts/ensure-chromium

# The published avtomatika-worker SDK, in its own venv (it pins its own aiohttp), so the
# tests can check that unmodified workers built with it run jobs on Interlock.
$(COMPAT_STAMP):
	$(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install --quiet avtomatika-worker==1.0b20
	touch $(COMPAT_STAMP)

compat: $(COMPAT_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

pytest: $(STAMP) graphviz chromium compat
	$(BIN)/pytest

test: lint pytest

clean:
	rm -rf $(VENV) $(COMPAT) .pytest_cache .mypy_cache .ruff_cache .hypothesis
