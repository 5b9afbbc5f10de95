# make repro : set up everything the offline default needs, then run the whole DVC pipeline
# make test  : same set-up if missing, then the full test suite (in parallel: PYTEST_PARALLEL= runs it serially)
# make paper : the paper's configuration (Corel-1K, ResNet50 ImageNet, GAP, cosine top-10)
# make compare : every experiment x dataset x method, one metric (METRIC=<any key of metrics/<ds>.json>; default:
#                each dataset's headline metric), on one screen
# make setup : .venv installed from requirements.lock (every package, transitive ones included, hash-checked)
# make lock  : recompile requirements.lock from pyproject.toml's pins (pip-tools in .venv-lock/; takes minutes)
SHELL := /bin/bash
PY := .venv/bin/python
export DVC_NO_ANALYTICS := 1
export PATH := $(CURDIR)/.venv/bin:$(PATH)
# g++: TorchInductor compiles the CPU extraction graph (extract.compile=auto)
DEB_PACKAGES := tuxpaint-stamps-default dataset-fashion-mnist chromium chromium-driver g++ \
  texlive-latex-base texlive-latex-recommended

.PHONY: setup lock repro test test-fast paper params compare .deb.installed

# the locked environment: every package of the pipeline, the tests (notebook runner included) and the optional
# Ray engine at the version and sha256 requirements.lock names, with plain pip; a changed lock rebuilds the venv
# from scratch, so nothing outside the lock stays (tests/test_lock.py checks the venv against the lock)
LOCK := requirements.lock
PIP := $(PY) -m pip --disable-pip-version-check
.venv/.installed: $(LOCK) pyproject.toml
	python3 -m venv --clear .venv
	$(PIP) install -q --require-hashes --no-deps -r $(LOCK)
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

# pip-compile (pip-tools, in a venv of its own so .venv stays exactly the lock) resolves pyproject.toml's pins
# with the extras test and ray through pip's own configuration (its indexes and find-links); existing pins are
# kept where they still fit: PIP_COMPILE_ARGS=--upgrade moves every unpinned package to its newest release
PIP_COMPILE_ARGS ?=
lock: .venv-lock/.installed
	.venv-lock/bin/pip-compile --quiet --generate-hashes --allow-unsafe --extra test --extra ray --strip-extras \
	  --no-emit-index-url --no-emit-find-links $(PIP_COMPILE_ARGS) -o $(LOCK) pyproject.toml

.venv-lock/.installed:
	python3 -m venv .venv-lock
	.venv-lock/bin/python -m pip install --disable-pip-version-check -q pip==23.2.1 pip-tools==7.6.2
	touch $@

.deb.installed:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

setup: .venv/.installed .deb.installed

params: .venv/.installed
	$(PY) -m cbir params

repro: setup
	$(PY) -m dvc repro
	$(PY) -m cbir readme

paper: setup
	$(PY) -m dvc exp run -S experiment=paper
	$(PY) -m cbir readme

# one worker per CPU (pytest-xdist), each test file whole on one worker so its module fixtures are built once
PYTEST_PARALLEL ?= -n auto --dist loadfile

test: setup
	$(PY) -m pytest $(PYTEST_PARALLEL)

test-fast: setup
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "not slow"

# every experiment x dataset x method, one metric at a time, fits 120 columns (cbir.report.compare reads
# `dvc exp show --json`): make compare METRIC=p@10; COMPARE_FORMAT=csv or latex for the same table as a file
METRIC ?=
COMPARE_FORMAT ?= text
compare:
	$(PY) -m cbir compare --metric '$(METRIC)' --format $(COMPARE_FORMAT)
