# One obvious command per task. `make help` lists them.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run serve services-up browser screenshots fmt lint typecheck test test-unit test-contract test-browser bench clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## Create .venv and install the package with test/dev extras

run: install ## Run the service (flatfile mode in ./.queue-data unless QUEUE_DATABASE_URL is set)
	$(BIN)/queue-service serve

serve: run

services-up: ## Make sure the local Postgres and Redis/Valkey are running (starts them if down)
	bash scripts/services-up

browser: ## Make sure Debian's chromium is installed (the /ui browser tests drive /usr/bin/chromium)
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

screenshots: install browser ## Regenerate docs/images/ui-*.png from a demo project
	$(PY) scripts/ui-screenshots

fmt: install ## Format and auto-fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lint: install ## ruff (lint + format check), mypy --strict on the packages, import layers (lint-imports)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install services-up browser lint ## Lint, type-check and run every test against real Postgres + Redis + chromium
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: install ## Unit tests only (no services needed)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-contract: install services-up ## The backend contract suite on every backend
	$(BIN)/pytest tests/contract $(PYTEST_ARGS)

test-browser: install browser ## The /ui browser tests (headless chromium against a real server)
	$(BIN)/pytest tests/browser $(PYTEST_ARGS)

bench: install services-up ## Benchmarks (prints figures beside their baselines)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
