# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv when missing and
# installs the project (editable) with constraints.txt, which pins the local CPU torch wheel.
# The install is redone only when pyproject.toml or constraints.txt change (stamp files).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_INSTALL := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt

# Offline hygiene for every entry point.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint bench readme clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-dev: pyproject.toml constraints.txt | $(PY)
	$(PIP_INSTALL) -e '.[dev]'
	@touch $@

$(VENV)/.stamp-bench: pyproject.toml constraints.txt $(VENV)/.stamp-dev
	$(PIP_INSTALL) -e '.[dev,bench]'
	@touch $@

demo: $(VENV)/.stamp-dev
	$(VENV)/bin/selfreward run

lint: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest

bench: $(VENV)/.stamp-bench
	$(PY) benchmarks/run_all.py

readme: $(VENV)/.stamp-dev
	$(PY) -m pipeline.config README.md

clean:
	rm -rf $(VENV) runs
