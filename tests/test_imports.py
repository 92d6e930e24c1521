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


def loaded_after_import(module: str) -> set[str]:
    """Top-level packages in sys.modules after importing `module` in a fresh interpreter."""
    code = f"import sys, {module}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_import_direction(module):
    loaded = loaded_after_import(module)
    assert module.split(".")[0] in loaded
    assert not loaded & set(FORBIDDEN[module]), f"{module} pulled in {sorted(loaded & set(FORBIDDEN[module]))}"
