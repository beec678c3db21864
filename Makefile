# Multitask trainer: local runs, tests, Docker and Vertex AI.
# Settings come from the environment and .env (see .env.example).
SHELL := /bin/bash
.DEFAULT_GOAL := help

# .env fills in only what the environment leaves unset. trainer/env.py parses it, as every command does
# (standard library only, so any python3 runs it before .venv exists); values are taken literally.
PROJECT_ROOT := $(dir $(abspath $(lastword $(MAKEFILE_LIST))))
DOTENV = PYTHONPATH="$(PROJECT_ROOT)" python3 -m trainer.env
# ENV_FILE=examples/<recipe>.env reads a recipe instead (make run-local ENV_FILE=...; python reads it too).
ENV_FILE ?= .env
ifneq (,$(wildcard $(ENV_FILE)))
$(shell mkdir -p .make && $(DOTENV) make $(ENV_FILE) > .make/env.mk)
include .make/env.mk
endif

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0

.PHONY: help install install-dev test test-quick chromium lint run-local settings clean

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
	ENV_FILE='$(ENV_FILE)' $(PY) -m trainer train

settings: install ## Print the effective settings and where each came from
	$(PY) -m trainer settings

clean: ## Remove outputs (keeps .venv)
	rm -rf outputs

# The names in $(1) that are unset or empty; targets below refuse to start while any is.
missing_vars = $(strip $(foreach v,$(1),$(if $(strip $($(v))),,$(v))))

# --- Cloud Storage bucket for checkpoints (issue 3) ---
# Checked when the target is asked for, before anything is installed or called (and before the
# REGION default below: a bucket's location is permanent, so it is never guessed).
ifneq (,$(filter create-bucket,$(MAKECMDGOALS)))
ifneq (,$(call missing_vars,PROJECT_ID BUCKET_NAME REGION))
$(error create-bucket: $(call missing_vars,PROJECT_ID BUCKET_NAME REGION) not set; set it in the environment or in .env (see .env.example))
endif
endif

.PHONY: create-bucket
create-bucket: install ## Create BUCKET_NAME in REGION for PROJECT_ID (idempotent)
	PROJECT_ID='$(PROJECT_ID)' BUCKET_NAME='$(BUCKET_NAME)' REGION='$(REGION)' $(PY) -m trainer create-bucket

# --- Docker and Vertex AI (issue 4) ---
# Settings: the "Cloud (Docker / Vertex AI)" section of .env.example. One-time setup for cloud-train:
#   gcloud auth login && gcloud auth application-default login
#   gcloud artifacts repositories create $(IMAGE_REPO_NAME) --repository-format=docker --location=$(REGION)
#   gcloud auth configure-docker $(REGION)-docker.pkg.dev
# SKIP_DOCKER=1 makes cloud-train use the image already pushed (no build, no push).
.PHONY: docker-build docker-push docker-local-train cloud-train cloud-status cloud-logs

DOCKER ?= docker
REGION ?= us-central1
IMAGE_REPO_NAME ?= multitask
IMAGE_NAME ?= multitask-trainer
IMAGE_TAG ?= latest
LOCAL_IMAGE ?= $(IMAGE_NAME):$(IMAGE_TAG)
IMAGE_URI = $(REGION)-docker.pkg.dev/$(PROJECT_ID)/$(IMAGE_REPO_NAME)/$(IMAGE_NAME):$(IMAGE_TAG)
DOCKER_SHM_SIZE ?= 2g
HOST_OUTPUT_DIR = $(abspath $(or $(OUTPUT_DIR),outputs/run))
ADC_FILE ?= $(or $(GOOGLE_APPLICATION_CREDENTIALS),$(or $(CLOUDSDK_CONFIG),$(HOME)/.config/gcloud)/application_default_credentials.json)
JOB_SPEC_FILE ?= .make/job-spec.yaml
LAST_JOB_FILE ?= .make/last-job-id
JOB_ID ?= $(shell cat $(LAST_JOB_FILE) 2>/dev/null)
ifeq ($(strip $(JOB_NAME)),)
JOB_NAME := multitask-$(shell date -u +%Y%m%d-%H%M%S)
endif
# Make hands python the values it used itself (for the image URI), whatever their source.
CLOUD_VARS := $(shell $(DOTENV) cloud-vars)
CLOUD_ENV = $(strip $(foreach v,$(CLOUD_VARS),$(if $(strip $($(v))),$(v)='$(strip $($(v)))')))
# Evaluated only when a recipe uses them.
DOCKER_GPU_FLAGS = $(shell $(DOCKER) info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia && echo --gpus all)
DOCKER_ADC_FLAGS = $(if $(wildcard $(ADC_FILE)),-v $(ADC_FILE):/tmp/gcloud/adc.json:ro -e GOOGLE_APPLICATION_CREDENTIALS=/tmp/gcloud/adc.json)

# Checked when the target is asked for, before anything is built or called.
ifneq (,$(filter docker-push cloud-train cloud-status cloud-logs,$(MAKECMDGOALS)))
ifneq (,$(call missing_vars,PROJECT_ID REGION))
$(error $(call missing_vars,PROJECT_ID REGION) not set; set it in the environment or in .env (see the Cloud section of .env.example))
endif
endif
ifneq (,$(filter cloud-train,$(MAKECMDGOALS)))
ifeq (,$(strip $(BUCKET_NAME)$(JOB_DIR)))
$(error BUCKET_NAME not set (or JOB_DIR=gs://...); set it in the environment or in .env (see the Cloud section of .env.example))
endif
endif
ifneq (,$(filter cloud-status cloud-logs,$(MAKECMDGOALS)))
ifeq (,$(strip $(JOB_ID)))
$(error JOB_ID not set and no job submitted from here yet ($(LAST_JOB_FILE)); run make cloud-train or pass JOB_ID=<id>)
endif
endif

docker-build: ## Build the training image (CPU image: BASE_IMAGE=python:3.11-slim)
	$(DOCKER) build -f docker/Dockerfile -t $(LOCAL_IMAGE) \
		$(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
		$(if $(TORCH_INDEX_URL),--build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL)) $(DOCKER_BUILD_ARGS) .

docker-push: docker-build ## Tag and push the image to Artifact Registry
	$(DOCKER) tag $(LOCAL_IMAGE) $(IMAGE_URI)
	$(DOCKER) push $(IMAGE_URI)

docker-local-train: docker-build ## Train in the container: GPUs if there, .env, the output dir and ADC mounted
	@mkdir -p "$(HOST_OUTPUT_DIR)" .make
	@# .env as docker's --env-file reads it (no quotes, no export), parsed by trainer/env.py like everything else
	@$(if $(wildcard $(ENV_FILE)),$(DOTENV) docker $(ENV_FILE),true) > .make/docker.env
	$(DOCKER) run --rm --init --shm-size=$(DOCKER_SHM_SIZE) --user $$(id -u):$$(id -g) $(DOCKER_GPU_FLAGS) \
		--env-file .make/docker.env -e OUTPUT_DIR=/app/outputs/run -v "$(HOST_OUTPUT_DIR)":/app/outputs/run \
		$(DOCKER_ADC_FLAGS) $(if $(PROJECT_ID),-e GOOGLE_CLOUD_PROJECT=$(PROJECT_ID)) \
		$(DOCKER_RUN_ARGS) $(LOCAL_IMAGE) $(TRAIN_ARGS)

cloud-train: ## Build + push the image (SKIP_DOCKER=1: no), render the job spec, submit a Vertex AI job
	@command -v gcloud >/dev/null || { echo "error: gcloud not found; install the Google Cloud CLI" >&2; exit 2; }
	@test -x $(PY) || { echo "error: $(PY) not found; run make install" >&2; exit 2; }
ifneq ($(SKIP_DOCKER),1)
	$(MAKE) --no-print-directory docker-push
endif
	@mkdir -p $(dir $(JOB_SPEC_FILE)) $(dir $(LAST_JOB_FILE))
	$(CLOUD_ENV) $(PY) -m trainer job-spec --output=$(JOB_SPEC_FILE)
	gcloud ai custom-jobs create --project=$(PROJECT_ID) --region=$(REGION) --display-name=$(JOB_NAME) \
		--config=$(JOB_SPEC_FILE) --format='value(name)' > $(LAST_JOB_FILE).tmp
	@name=$$(cat $(LAST_JOB_FILE).tmp); id=$${name##*/}; \
	test -n "$$id" || { echo "error: gcloud returned no job name" >&2; exit 1; }; \
	echo "$$id" > $(LAST_JOB_FILE); rm -f $(LAST_JOB_FILE).tmp; \
	echo "Job id:  $$id ($$name)"; \
	echo "Console: https://console.cloud.google.com/ai/platform/locations/$(REGION)/training/$$id?project=$(PROJECT_ID)"; \
	echo "Next:    make cloud-logs   |   make cloud-status   (JOB_ID=$$id)"

cloud-status: ## State of the last submitted job (or JOB_ID=...)
	gcloud ai custom-jobs describe $(JOB_ID) --project=$(PROJECT_ID) --region=$(REGION) \
		--format='yaml(name,displayName,state,createTime,startTime,endTime,error)'

cloud-logs: ## Stream the logs of the last submitted job (or JOB_ID=...)
	gcloud ai custom-jobs stream-logs $(JOB_ID) --project=$(PROJECT_ID) --region=$(REGION)
