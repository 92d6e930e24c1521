"""Running the real CLI in subprocesses for crash tests: tiny config files, launches, pause markers."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from dpo.files import sha256_file
from flows.stepdir import MANIFEST, PAUSE_MARKER_ENV, PAUSE_STEP_ENV
from pipeline.config import RunConfig, load_config
from tests.flows.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "pipeline.cli"]


def write_config(path: Path, *overrides: str) -> tuple[Path, RunConfig]:
    """The tiny test config plus `overrides`, dumped as a YAML file the CLI reads back unchanged."""
    config = tiny_config(*overrides)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    assert load_config(path) == config
    return path, config


def cli_env(prefect_api_url: str, **extra: str) -> dict[str, str]:
    """Environment of a CLI subprocess: the session's Prefect server, one torch thread (the same
    arithmetic as the in-process tests and a fair share of a 2-core machine), no inherited hooks."""
    drop = ("MLFLOW_TRACKING_URI", "PREFECT_HOME", PAUSE_STEP_ENV, PAUSE_MARKER_ENV)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update({"PREFECT_API_URL": prefect_api_url, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"})
    env.update(extra)
    return env


def launch(config: Path, output: Path, env: dict, log: Path, pause: str | None = None) -> subprocess.Popen:
    """`python -m pipeline.cli run CONFIG --output OUTPUT` in its own process group."""
    if pause is not None:
        env = {**env, PAUSE_STEP_ENV: pause}
    return subprocess.Popen([*CLI, "run", str(config), "--output", str(output)], cwd=REPO, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_marker(marker: Path, proc: subprocess.Popen, log: Path, timeout: float = 420) -> dict:
    """Wait until the run paused (it wrote `marker`); fails if it exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists():
            return json.loads(marker.read_text(encoding="utf-8"))
        if proc.poll() is not None:
            raise AssertionError(f"run exited with {proc.returncode} before pausing:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"no pause marker after {timeout} s:\n{log.read_text()[-4000:]}")


def manifests(run_dir: Path) -> dict[str, int]:
    """Published steps: {relative folder: manifest mtime_ns}."""
    return {str(p.parent.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob(MANIFEST)
            if not any(part.startswith(".") for part in p.relative_to(run_dir).parts)}


def hidden_entries(run_dir: Path) -> list[str]:
    """Temp folders, training states and markers left in a run directory (the lock and identity files excepted)."""
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob(".*") if p.name not in (".lock", ".identity.json"))


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))


def digests(run_dir: Path, names: list[str]) -> dict[str, str]:
    return {name: sha256_file(run_dir / name) for name in names}
