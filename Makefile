# soundwatch — the commands a newcomer needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned for reproducible CPU installs; set TORCH_SPEC='torch' (or a CUDA index) to choose your own.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# the demo stops by itself after 5 minutes (Ctrl-C stops it earlier); DEMO_ARGS="" runs until Ctrl-C
DEMO_ARGS ?= --duration 300

.PHONY: help setup system-deps services services-down test lint demo clean

help:
	@echo "make demo      run the whole pipeline on a simulated plant (sets everything up first)"
	@echo "make test      run the test suite against the local services (sets everything up first)"
	@echo "make setup     create $(VENV) and install soundwatch with its test extras"
	@echo "make services  start the local Kafka-protocol broker, Redis and InfluxDB on 127.0.0.1"
	@echo "make lint      ruff check, ruff format --check, lint-imports (stages import only soundwatch)"

system-deps:
	@bash deploy/scripts/install-system-deps.sh

$(BIN)/soundwatch: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[test,dev]'
	@touch $@

setup: $(BIN)/soundwatch

services: system-deps setup
	$(BIN)/soundwatch services up

services-down:
	$(BIN)/soundwatch services down

test: services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: system-deps setup
	$(BIN)/soundwatch demo $(DEMO_ARGS)
	@echo "open var/demo/report.html; Grafana provisioning in var/demo/grafana-provisioning"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

clean:
	rm -rf var reports .pytest_cache .hypothesis
