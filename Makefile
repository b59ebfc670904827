# IntentRec: `make help` lists the targets. `make train` and `make test` install on first use.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The local CPU wheel on these machines; override (e.g. TORCH_SPEC="torch>=2.4,<2.14") elsewhere.
TORCH_SPEC ?= torch==2.13.0
EXP ?= quickstart
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install train data test test-slow lint format bench bench-data clean

help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, so Lightning's dependency on torch is already satisfied by the CPU build.
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed ## build .venv (torch CPU first, then the package with dev tools)

train: install ## run an experiment: make train EXP=ablation_intent ARGS="data=ml-100k"
	$(BIN)/intentrec train $(EXP) $(ARGS)

data: install ## prepare a dataset: make data NAME=ml-100k, NAME=logs MAPPING=datasets/logs_example.yaml, NAME=movielens DATA_PATH=~/ml-1m
	$(BIN)/intentrec data prepare $(or $(NAME),synthetic) $(if $(or $(MAPPING),$(DATA_PATH)),--path "$(or $(MAPPING),$(DATA_PATH))") $(ARGS)

test: install ## fast test suite (CPU, < 10 min on 2 cores)
	$(BIN)/pytest -q

test-slow: install ## slow tests too (DDP on CPU, longer runs)
	$(BIN)/pytest -m "slow or not slow"

lint: install ## ruff lint + format check
	$(BIN)/ruff check intentrec tests benchmarks
	$(BIN)/ruff format --check intentrec tests benchmarks

format: install ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix intentrec tests benchmarks
	$(BIN)/ruff format intentrec tests benchmarks

bench-data: install ## data pipeline benchmark (1M, 10M synthetic events)
	$(BIN)/python -m benchmarks.run --only data

bench: install ## all CPU benchmarks; prints JSON lines + a table, writes runs/bench/
	$(BIN)/python -m benchmarks.run

clean: ## remove caches and run outputs (keeps .venv)
	rm -rf runs .cache .pytest_cache .ruff_cache
