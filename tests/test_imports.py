"""Imports point one way: dpo uses none of our packages, generation none, judging only generation and
dpo's data format; none of them loads the orchestration layers (Prefect, MLflow, pipeline, flows),
`pipeline.config` loads no ML stack, so a bad config fails in well under a second, and a launched rank
(`flows.launch`) loads neither Prefect nor MLflow (~4 s less start-up per rank here)."""

import subprocess
import sys

import pytest

ORCHESTRATION = ("prefect", "mlflow", "pipeline", "flows")
FORBIDDEN = {
    "dpo": ("generation", "judging", *ORCHESTRATION),
    "generation": ("dpo", "judging", *ORCHESTRATION),
    "judging": ORCHESTRATION,
    "pipeline.config": ("torch", "transformers", "mlflow", "prefect", "dpo", "generation", "judging", "flows"),
    "flows.launch": ("prefect", "mlflow"),
}


@pytest.fixture(scope="module")
def loaded() -> dict[str, set[str]]:
    """Top-level packages in sys.modules after importing each module of FORBIDDEN in a fresh
    interpreter; the interpreters run side by side (each one's imports take seconds)."""
    code = "import sys, {}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    procs = {module: subprocess.Popen([sys.executable, "-c", code.format(module)], stdout=subprocess.PIPE, text=True)
             for module in FORBIDDEN}
    try:
        outputs = {module: proc.communicate(timeout=120)[0] for module, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.kill()  # a no-op for those that finished
    assert all(proc.returncode == 0 for proc in procs.values())
    return {module: set(out.split()) for module, out in outputs.items()}


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_import_direction(module, loaded):
    assert module.split(".")[0] in loaded[module]
    pulled = loaded[module] & set(FORBIDDEN[module])
    assert not pulled, f"{module} pulled in {sorted(pulled)}"
