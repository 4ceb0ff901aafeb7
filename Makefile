# pdsuite - see README.md. Every target works from a fresh clone; setup steps are idempotent.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PDSUITE := $(BIN)/pdsuite
COMPOSE := docker compose
PLAN    ?= exp3-compare
DRIVER  ?= compose
# Images build FROM the local debootstrapped base when it exists (CI, `make demo`: no registry needed), else
# python:3.11-slim (scripts/build-images.sh decides when BASE_IMAGE is empty).
BASE_IMAGE ?=
DEPLOYMENTS := vllm-disagg vllm-colocated vllm-tp2 vllm-dp2 vllm-1p2d vllm-2p1d \
               sglang-disagg sglang-colocated sglang-tp2 sglang-dp2 sglang-1p2d sglang-2p1d

.PHONY: help venv gen lint setup images test test-unit test-integration test-docker demo bench report kvprobe doctor \
        locust down ps logs clean $(addprefix up-,$(DEPLOYMENTS))

help:  ## list targets
	@grep -hE '^[a-zA-Z_%-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

# ---- environment ---------------------------------------------------------------------------------
$(BIN)/pdsuite: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(BIN)/pdsuite  ## the suite's own venv (.venv)

gen: venv  ## regenerate docker-compose.yml and .env.example from suite/
	$(PDSUITE) gen

lint: venv  ## ruff + generated files up to date
	$(BIN)/ruff check .
	$(PDSUITE) gen --check

# ---- tests ---------------------------------------------------------------------------------------
test-unit: venv  ## fast unit tests (< 2 min, no Docker, no engines)
	$(BIN)/pytest -q -m "not integration and not docker"

# pytest exit 5 = nothing collected: fatal for `make test` (CI must prove something), a note for one marker.
PYTEST_SOME = rc=0; PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q --durations=10 $(1) || rc=$$?; \
	if [ $$rc = 5 ]; then echo "pytest: no tests selected by: $(1)"; rc=0; fi; exit $$rc

test-integration: venv  ## tests that start processes (emulator, real routers, vLLM on CPU)
	@$(call PYTEST_SOME,-m integration)

test-docker: venv  ## Docker e2e: compose config per profile, emulated stacks behind the real routers, report
	PATH=$(CURDIR)/$(BIN):$$PATH PDSUITE_REQUIRE_DOCKER=1 $(BIN)/pytest -q --durations=10 -m docker

setup: venv  ## install everything the tests need: routers, engine venvs, Docker engine + Compose, images
	$(BIN)/pip install -q -e '.[dev,routers,probe]'
	if [ -f scripts/setup-engine-venvs.sh ]; then bash scripts/setup-engine-venvs.sh; fi
	bash scripts/setup-docker.sh
	$(MAKE) --no-print-directory images

images:  ## build the suite and router images (and vllm-cpu) from BASE_IMAGE; skipped when inputs are unchanged
	BASE_IMAGE=$(BASE_IMAGE) bash scripts/build-images.sh

# Tests call `pdsuite`, `vllm-router`, `locust` by name: the venv's bin goes first on PATH.
test: setup  ## every test (unit, integration, Docker e2e), after installing what they need; what CI runs
	PATH=$(CURDIR)/$(BIN):$$PATH PDSUITE_REQUIRE_DOCKER=1 PDSUITE_REQUIRE_ENGINE_VENVS=1 \
	  $(BIN)/pytest -q --durations=15

# ---- main job ------------------------------------------------------------------------------------
demo: venv  ## the full comparison on CPU backends (emulated engines, real routers, Locust) -> reports/demo/
	bash scripts/setup-docker.sh
	BASE_IMAGE=$(BASE_IMAGE) bash scripts/build-images.sh suite router
	$(PDSUITE) run demo --backend emu --driver $(DRIVER) --out results
	$(PDSUITE) report $$(ls -d results/demo/*/ | tail -n 1) --name demo --out reports
	@echo "report: reports/demo/index.html (EMULATED engines: shows the pipeline, not engine performance)"

bench: venv  ## run an experiment plan: make bench PLAN=exp3-compare [BACKEND=gpu|emu|cpu] [DRIVER=compose|process]
	$(PDSUITE) run $(PLAN) $(if $(BACKEND),--backend $(BACKEND)) --driver $(DRIVER)

# Default: the newest results folder (of PLAN if given) -> reports/<plan>/
LATEST = $(shell ls -td results/$(if $(filter command line,$(origin PLAN)),$(PLAN),*)/*/ 2>/dev/null | head -n 1)
report: venv  ## comparison report -> reports/<name>/ [RESULTS="results/<plan>/<stamp> ..."] [NAME=<name>]
	@test -n "$(or $(RESULTS),$(LATEST))" || { echo "make report: no results yet (run make bench or make demo)"; exit 2; }
	$(PDSUITE) report $(or $(RESULTS),$(LATEST)) --name $(or $(NAME),$(notdir $(patsubst %/,%,$(dir $(patsubst %/,%,$(or $(RESULTS),$(LATEST))))))) --out reports

# ---- GPU stack -----------------------------------------------------------------------------------
# Any profile: up-vllm-disagg, up-sglang-tp2, up-emu-vllm-disagg, up-cpu-vllm-colocated ... (`pdsuite deployments`)
# DRIVER=host: no Docker - the same command lines as local processes, engines from PATH or ENGINE_PREFIX.
up-%: venv  ## up-<profile> [DRIVER=host]: check the host, build images if needed, start, wait until healthy
ifeq ($(DRIVER),host)
	$(PDSUITE) up $* --driver host
else
	$(PDSUITE) doctor --profile $*
	BASE_IMAGE=$(BASE_IMAGE) bash scripts/build-images.sh suite router $(if $(filter cpu-%,$*),vllm-cpu)
	$(COMPOSE) --profile $* up -d --wait
endif

KVPROBE_ARGS ?= --prefill
KVPROBE_OUT  ?= results/kvprobe.json
kvprobe: venv  ## KV-transfer link probe (copy, NCCL P2P, NIXL) inside the vLLM image on PREFILL_GPU+DECODE_GPU
	@set -e; read -r img p d < <($(BIN)/python -c 'from suite.config import load_settings as l; s = l(); \
	  print(s.VLLM_IMAGE, s.PREFILL_GPU, s.DECODE_GPU)'); mkdir -p $(dir $(KVPROBE_OUT)); \
	echo "kvprobe in $$img on GPUs $$p,$$d -> $(KVPROBE_OUT)"; \
	docker run --rm --gpus "\"device=$$p,$$d\"" --ipc=host --network=host --shm-size=8g \
	  --user "$$(id -u):$$(id -g)" -e HOME=/tmp -e PYTHONPATH=/suite -v "$(CURDIR):/suite" -w /suite \
	  --entrypoint python3 "$$img" -m suite.kvprofile --out $(KVPROBE_OUT) $(KVPROBE_ARGS)

down:  ## stop every profile (always safe to run) [DRIVER=host: every deployment the host driver started]
ifeq ($(DRIVER),host)
	$(PDSUITE) down --driver host
else
	COMPOSE_PROFILES='*' $(COMPOSE) down --remove-orphans --timeout 30
endif

ps:  ## containers of every profile
	COMPOSE_PROFILES='*' $(COMPOSE) ps -a

logs:  ## follow logs of every running service
	COMPOSE_PROFILES='*' $(COMPOSE) logs -f --tail 100

doctor: venv  ## check Docker, GPUs, NVLink, ports, model access (PROFILE=vllm-disagg)
	$(PDSUITE) doctor $(if $(PROFILE),--profile $(PROFILE))

locust:  ## Locust UI on 127.0.0.1:8089 against the running deployment: make locust DEPLOYMENT=sglang-disagg
	BASE_IMAGE=$(BASE_IMAGE) bash scripts/build-images.sh suite
	$(if $(DEPLOYMENT),LOCUST_DEPLOYMENT=$(DEPLOYMENT)) $(COMPOSE) --profile locust up -d --wait
