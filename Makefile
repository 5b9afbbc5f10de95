# make repro : set up everything the offline default needs, then run the whole DVC pipeline
# make test  : same set-up if missing, then the full test suite (in parallel: PYTEST_PARALLEL= runs it serially)
# make paper : the paper's configuration (Corel-1K, ResNet50 ImageNet, GAP, cosine top-10)
# make compare : every experiment x dataset x method, one metric (METRIC=<any key of metrics/<ds>.json>; default:
#                each dataset's headline metric), on one screen
SHELL := /bin/bash
PY := .venv/bin/python
export DVC_NO_ANALYTICS := 1
export PATH := $(CURDIR)/.venv/bin:$(PATH)
# g++: TorchInductor compiles the CPU extraction graph (extract.compile=auto)
DEB_PACKAGES := tuxpaint-stamps-default dataset-fashion-mnist chromium chromium-driver g++ \
  texlive-latex-base texlive-latex-recommended

.PHONY: setup repro test test-fast paper params compare .deb.installed

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install --disable-pip-version-check -q --upgrade pip
	$(PY) -m pip install --disable-pip-version-check -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test]'
	touch $@

# the test suite also covers the optional Ray engine
.venv/.installed-ray: .venv/.installed
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test,ray]'
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

test: setup .venv/.installed-ray
	$(PY) -m pytest $(PYTEST_PARALLEL)

test-fast: setup
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "not slow"

# every experiment x dataset x method, one metric at a time, fits 120 columns (cbir.report.compare reads
# `dvc exp show --json`): make compare METRIC=p@10; COMPARE_FORMAT=csv or latex for the same table as a file
METRIC ?=
COMPARE_FORMAT ?= text
compare:
	$(PY) -m cbir compare --metric '$(METRIC)' --format $(COMPARE_FORMAT)
