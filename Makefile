# `make run` sets everything up and trains the default model; `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HFSNET_DATA ?= ../shared/datasets/cifar10-jpg.tar.gz
RUN_ARGS ?=

.PHONY: setup run test test-slow lint bench browser clean

setup: $(VENV)/.installed

# Reinstall when the package metadata changes; torch is pinned in pyproject.toml (an unpinned
# torch pulls a multi-GB CUDA build).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,onnx,tensorboard,yaml,pretrained]'
	touch $@

# Each `make run` is a new run: --overwrite replaces the previous one in runs/main (train refuses
# to start over a finished run without it).
run: setup
	$(BIN)/hfsnet train --recipe fast --data $(HFSNET_DATA) --out runs/main --overwrite $(RUN_ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks

# The HTML report test renders in Debian's chromium: installed here when missing and we are
# root; under CI (CI=true) a missing browser fails that test instead of skipping it.
HFSNET_REQUIRE_BROWSER ?= $(if $(CI),1,0)

browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium could not be installed; the report's browser test will skip or fail"

test: lint browser
	HFSNET_REQUIRE_BROWSER=$(HFSNET_REQUIRE_BROWSER) $(BIN)/python -m pytest -q

test-slow: setup
	HFSNET_DATA=$(HFSNET_DATA) $(BIN)/python -m pytest -q -m slow

# Speed and memory benchmarks: numbers go to benchmarks/results/*.json (minutes to hours).
bench: setup
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/time_to_accuracy.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
