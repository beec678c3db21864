# Multitask trainer: local runs, tests, Docker and Vertex AI.
# Settings come from the environment and .env (see .env.example).
SHELL := /bin/bash
.DEFAULT_GOAL := help

# .env fills in only what the environment leaves unset (as python-dotenv does).
ifneq (,$(wildcard .env))
$(shell mkdir -p .make && sed -nE "s/^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)[[:space:]]*=[[:space:]]*['\"]?([^'\"]*)['\"]?[[:space:]]*$$/\2 ?= \3/p" .env > .make/env.mk)
include .make/env.mk
endif

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0

.PHONY: help install install-dev test lint run-local settings clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls gigabytes of CUDA wheels
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed ## Create .venv and install the pinned requirements

install-dev: $(VENV)/.installed-dev ## install, plus test and lint tools

test: install-dev ## Run the offline test suite
	$(VENV)/bin/ruff check trainer tests benchmarks scripts
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install-dev ## ruff
	$(VENV)/bin/ruff check trainer tests benchmarks scripts

run-local: install ## Train with .env if present (no settings: the offline demo)
	$(PY) -m trainer train

settings: install ## Print the effective settings and where each came from
	$(PY) -m trainer settings

clean: ## Remove outputs (keeps .venv)
	rm -rf outputs

# --- Cloud Storage bucket for checkpoints (issue 3) ---
# Checked when the target is asked for, before anything is installed or called.
ifneq (,$(filter create-bucket,$(MAKECMDGOALS)))
BUCKET_VARS_MISSING := $(strip $(foreach v,PROJECT_ID BUCKET_NAME REGION,$(if $(strip $($(v))),,$(v))))
ifneq (,$(BUCKET_VARS_MISSING))
$(error create-bucket: $(BUCKET_VARS_MISSING) not set; set it in the environment or in .env (see .env.example))
endif
endif

.PHONY: create-bucket
create-bucket: install ## Create BUCKET_NAME in REGION for PROJECT_ID (idempotent)
	PROJECT_ID='$(PROJECT_ID)' BUCKET_NAME='$(BUCKET_NAME)' REGION='$(REGION)' $(PY) -m trainer create-bucket
