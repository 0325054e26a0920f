# xlafw: two commands on a fresh machine.
#   make train   trains the embedded default (llama_tiny on Shakespeare, XLA CPU)
#   make test    runs the test suite (what CI runs)
# Both create the virtual environment first if it is missing. It lives outside
# the clone, keyed by a hash of the dependency pins, so every clone and CI run
# on this machine reuses it.

SHELL := /bin/bash
.DEFAULT_GOAL := help

BASE_PYTHON ?= python3
XLAFW_CACHE ?= $(HOME)/.cache/xlafw
PINS_HASH := $(shell cat requirements.txt requirements-nodeps.txt | sha256sum | cut -c1-12)
VENV := $(XLAFW_CACHE)/venv-$(PINS_HASH)
PY := $(VENV)/bin/python
READY := $(VENV)/.ready
# xpk (the GKE launcher) in an environment of its own: its pins clash with ours.
XPK_HASH := $(shell cat requirements-xpk.txt | sha256sum | cut -c1-12)
XPK_VENV := $(XLAFW_CACHE)/xpk-$(XPK_HASH)
XPK_READY := $(XPK_VENV)/.ready

# Arguments passed through to xlafw.main / pytest, e.g.
#   make train ARGS='--fdl_set=trainer.max_steps=50'
#   make test ARGS='-k config'
ARGS ?=

export PJRT_DEVICE ?= CPU
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
# xlafw.launch runs this xpk (else the one on PATH).
export XLAFW_XPK ?= $(XPK_VENV)/bin/xpk

.PHONY: help env python-path train test lint format golden image

help:
	@echo "make train        train the default experiment (llama_tiny, XLA CPU)"
	@echo "make test         run the test suite"
	@echo "make lint         ruff check + format check"
	@echo "make golden       regenerate tests/golden/ after changing an experiment"
	@echo "make -s python-path   print the environment's interpreter"
	@echo "ARGS='...' passes arguments through, e.g. make train ARGS='--fdl_set=trainer.max_steps=50'"

# Built only when missing: the path already encodes the pins, so a fresh clone
# (with newer file times) reuses an existing environment. A half-built
# environment has no .ready marker and is rebuilt from scratch.
$(READY):
	@mkdir -p $(XLAFW_CACHE)
	@echo "xlafw: creating $(VENV) (first run only; torch + torch_xla take a few minutes)"
	flock $(XLAFW_CACHE)/.lock bash -euo pipefail -c '\
	  if [ -f $(READY) ]; then exit 0; fi; \
	  rm -rf $(VENV); \
	  $(BASE_PYTHON) -m venv $(VENV); \
	  $(PY) -m pip install --quiet --upgrade pip; \
	  $(PY) -m pip install --quiet -r requirements.txt; \
	  $(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt; \
	  touch $(READY)'

$(XPK_READY):
	@mkdir -p $(XLAFW_CACHE)
	flock $(XLAFW_CACHE)/.lock-xpk bash -euo pipefail -c '\
	  if [ -f $(XPK_READY) ]; then exit 0; fi; \
	  rm -rf $(XPK_VENV); \
	  $(BASE_PYTHON) -m venv $(XPK_VENV); \
	  $(XPK_VENV)/bin/python -m pip install --quiet -r requirements-xpk.txt; \
	  touch $(XPK_READY)'

env: $(READY) $(XPK_READY)

python-path: $(READY)
	@echo $(PY)

train: $(READY)
	$(PY) -m xlafw.main --fdl_config=experiments.llama_tiny $(ARGS)
	$(PY) -m xlafw.sample --run_dir=runs/llama_tiny --prompt="ROMEO:" --max_new_tokens=48

test: $(READY) $(XPK_READY)
	$(PY) -m pytest $(ARGS)

lint: $(READY)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(READY)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

golden: $(READY)
	$(PY) -m xlafw.config.golden --write

# The pod image (Dockerfile): make image IMAGE=REGISTRY/xlafw:TAG, then docker push.
image:
	@test -n "$(IMAGE)" || { echo "usage: make image IMAGE=REGISTRY/xlafw:TAG"; exit 2; }
	docker build -t $(IMAGE) .
