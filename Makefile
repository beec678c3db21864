# Multitask trainer: local runs, tests, Docker and Vertex AI.
# Settings come from the environment and .env (see .env.example).
SHELL := /bin/bash
.DEFAULT_GOAL := help

# No setting's value is ever part of this file's text, so neither make nor the shell can read one as code. A recipe
# that needs a value asks trainer/config/env.py for it (standard library only, so any python3 runs it before .venv
# exists): `$(DOTENV) get NAME` prints the environment's value, else ENV_FILE's (default .env), taken literally,
# and the recipe uses it as one quoted word. The gcloud targets are python's own (python -m trainer cloud-train,
# cloud-status, cloud-logs, create-bucket): they check each value's form and call gcloud with an argument list.
# ENV_FILE=examples/<recipe>.env reads a recipe instead (make run-local ENV_FILE=...).
PROJECT_ROOT := $(dir $(abspath $(lastword $(MAKEFILE_LIST))))
DOTENV = PYTHONPATH="$(PROJECT_ROOT)" python3 -m trainer.config.env
# A make variable's text as one single-quoted shell word.
shq = '$(subst ','\'',$(1))'

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0

.PHONY: help install install-dev test test-all test-quick chromium lint run-local settings clean

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

# Tests run in 2 pytest-xdist workers; tests/conftest.py keeps the tests that share a trained run on one worker and
# hands out the slow ones first. PYTEST_WORKERS=0 runs them in this process, one after the other.
PYTEST_WORKERS ?= 2
PYTEST_PARALLEL = $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadscope)

test: install-dev chromium ## Ruff and every test, in 2 workers (what CI runs; .ci/run: at most 15 minutes on 2 cores)
	$(VENV)/bin/ruff check trainer tests benchmarks scripts
	$(PY) -m pytest -q $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-all: test ## The same as make test: every test

test-quick: install-dev ## Ruff and the tests not marked slow, in 2 workers, for the inner loop
	$(VENV)/bin/ruff check trainer tests benchmarks scripts
	$(PY) -m pytest -q -m "not slow" $(PYTEST_PARALLEL) $(PYTEST_ARGS)

chromium: ## Install Chromium for the report's browser check (make test does; about 25 s with apt)
	@# tests/test_report.py renders report.html in it; without apt (or root) that one test is skipped
	@command -v chromium >/dev/null || (DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
		|| (apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null 2>&1)) \
		|| echo "chromium not installed (no apt, or not root): the browser check of report.html will be skipped"

lint: install-dev ## ruff
	$(VENV)/bin/ruff check trainer tests benchmarks scripts

run-local: install ## Train with .env if present (no settings: the offline demo); ENV_FILE=examples/x.env: a recipe
	$(PY) -m trainer train

settings: install ## Print the effective settings and where each came from
	$(PY) -m trainer settings

clean: ## Remove outputs (keeps .venv)
	rm -rf outputs

NEED_PY = test -x $(PY) || { echo "error: $(PY) not found; run make install" >&2; exit 2; }

# --- Cloud Storage bucket for checkpoints (issue 3) ---
# python checks PROJECT_ID, BUCKET_NAME and REGION (a bucket's location is permanent, so it is never guessed).
.PHONY: create-bucket
create-bucket: install ## Create BUCKET_NAME in REGION for PROJECT_ID (idempotent)
	$(PY) -m trainer create-bucket

# --- Docker and Vertex AI (issue 4) ---
# Settings: the "Cloud (Docker / Vertex AI)" section of .env.example. One-time setup for cloud-train:
#   gcloud auth login && gcloud auth application-default login
#   gcloud artifacts repositories create multitask --repository-format=docker --location=$REGION
#   gcloud auth configure-docker $REGION-docker.pkg.dev
# SKIP_DOCKER=1 makes cloud-train use the image already pushed (no build, no push).
# DOCKER_BUILD_ARGS, DOCKER_RUN_ARGS and TRAIN_ARGS are extra words for the docker command line, as you type them.
.PHONY: docker-build docker-push docker-local-train cloud-train cloud-status cloud-logs

DOCKER ?= docker
DOCKER_SHM_SIZE ?= 2g
# Shell lines that set $$local (LOCAL_IMAGE, default $$IMAGE_NAME:$$IMAGE_TAG) and $$uri (the Artifact Registry one).
LOCAL_IMAGE_VAR = name=$$($(DOTENV) get IMAGE_NAME multitask-trainer); tag=$$($(DOTENV) get IMAGE_TAG latest); \
	local=$$($(DOTENV) get LOCAL_IMAGE "$$name:$$tag")
IMAGE_URI_VAR = region=$$($(DOTENV) get REGION us-central1); project=$$($(DOTENV) get PROJECT_ID); \
	repo=$$($(DOTENV) get IMAGE_REPO_NAME multitask); uri="$$region-docker.pkg.dev/$$project/$$repo/$$name:$$tag"

docker-build: ## Build the training image (CPU image: BASE_IMAGE=python:3.11-slim)
	@set -e; $(LOCAL_IMAGE_VAR); base=$$($(DOTENV) get BASE_IMAGE); index=$$($(DOTENV) get TORCH_INDEX_URL); set -x; \
	$(DOCKER) build -f docker/Dockerfile -t "$$local" $${base:+--build-arg "BASE_IMAGE=$$base"} \
		$${index:+--build-arg "TORCH_INDEX_URL=$$index"} $(DOCKER_BUILD_ARGS) .

docker-push: ## Tag and push the image to Artifact Registry
	@$(DOTENV) require PROJECT_ID
	@$(MAKE) --no-print-directory docker-build
	@set -e; $(LOCAL_IMAGE_VAR); $(IMAGE_URI_VAR); set -x; $(DOCKER) tag "$$local" "$$uri"; $(DOCKER) push "$$uri"

docker-local-train: docker-build ## Train in the container: GPUs if there, .env, the output dir and ADC mounted
	@# .env as docker's --env-file reads it (no quotes), written by trainer/config/env.py for the owner only, removed after
	@set -e; $(LOCAL_IMAGE_VAR); out=$$($(DOTENV) get OUTPUT_DIR outputs/run); mkdir -p -- "$$out" .make; \
	out=$$(cd -- "$$out" && pwd); project=$$($(DOTENV) get PROJECT_ID); \
	adc=$$($(DOTENV) get GOOGLE_APPLICATION_CREDENTIALS); gcloud=$$($(DOTENV) get CLOUDSDK_CONFIG "$$HOME/.config/gcloud"); \
	adc=$${adc:-$$gcloud/application_default_credentials.json}; set --; \
	if [ -f "$$adc" ]; then set -- -v "$$adc:/tmp/gcloud/adc.json:ro" -e GOOGLE_APPLICATION_CREDENTIALS=/tmp/gcloud/adc.json; fi; \
	gpus=; if $(DOCKER) info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia; then gpus="--gpus all"; fi; \
	trap 'rm -f .make/docker.env' EXIT; $(DOTENV) docker .make/docker.env; set -x; \
	$(DOCKER) run --rm --init --shm-size=$(call shq,$(DOCKER_SHM_SIZE)) --user "$$(id -u):$$(id -g)" $$gpus \
		--env-file .make/docker.env -e OUTPUT_DIR=/app/outputs/run -v "$$out:/app/outputs/run" \
		"$$@" $${project:+-e "GOOGLE_CLOUD_PROJECT=$$project"} \
		$(DOCKER_RUN_ARGS) "$$local" $(TRAIN_ARGS)

cloud-train: ## Build + push the image (SKIP_DOCKER=1: no), render the job spec, submit a Vertex AI job
	@command -v gcloud >/dev/null || { echo "error: gcloud not found; install the Google Cloud CLI" >&2; exit 2; }
	@$(NEED_PY)
	@$(PY) -m trainer cloud-train --check
	@skip=$$($(DOTENV) get SKIP_DOCKER) && { [ "$$skip" = 1 ] || $(MAKE) --no-print-directory docker-push; }
	$(PY) -m trainer cloud-train

cloud-status: ## State of the last submitted job (or JOB_ID=...)
	@$(NEED_PY)
	$(PY) -m trainer cloud-status

cloud-logs: ## Stream the logs of the last submitted job (or JOB_ID=...)
	@$(NEED_PY)
	$(PY) -m trainer cloud-logs
