"""Training steps in the flow process, or as `accelerate launch` subprocesses (multi-GPU).

`run_training` is what the flow calls. With `runtime.launcher: accelerate` it writes a small JSON
spec and runs `accelerate launch --num_processes N -m flows.launch SPEC`; every rank runs the same
step function, the main rank publishes the step folder, and the parent reads its manifest. The
subprocess logs its curves to the same MLflow run (by id), so both paths look the same in the UI.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

from accelerate import PartialState

from flows import steps
from flows.stepdir import StepRecord, launch_rank
from pipeline.config import RunConfig
from pipeline.tracking import Tracker

Kind = Literal["sft", "dpo"]


def _train_here(
    kind: Kind, config: RunConfig, run_dir: Path, model: StepRecord, inputs: StepRecord, iteration: int,
    tracking_uri: str | None, run_id: str | None,
) -> StepRecord:
    log_fn = None
    if tracking_uri and run_id and launch_rank() == 0:
        tracker = Tracker.from_config(tracking_uri, config.tracking)
        log_fn = tracker.buffered_metrics(run_id, config.tracking.metrics_flush_seconds)
    with log_fn or contextlib.nullcontext():  # leaving it sends the last curve points, also on failure
        if kind == "sft":
            return steps.train_sft(config, run_dir, model, inputs, log_fn=log_fn)
        return steps.train_dpo(config, iteration, run_dir, model, inputs, log_fn=log_fn)


def run_training(
    kind: Kind,
    config: RunConfig,
    run_dir: Path,
    model: StepRecord,
    inputs: StepRecord,
    *,
    iteration: int = 0,
    tracking_uri: str | None = None,
    run_id: str | None = None,
) -> StepRecord:
    """Train SFT (inputs = seed data) or DPO (inputs = pairs) from `model`; returns the new model's record."""
    if config.runtime.launcher == "inprocess":
        return _train_here(kind, config, Path(run_dir), model, inputs, iteration, tracking_uri, run_id)
    spec = {
        "kind": kind,
        "config": config.model_dump(mode="json"),
        "run_dir": str(run_dir),
        "model": model.model_dump(),
        "inputs": inputs.model_dump(),
        "iteration": iteration,
        "tracking_uri": tracking_uri,
        "run_id": run_id,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        subprocess.run(_launch_command(config, f.name), check=True)
    finally:
        os.unlink(f.name)
    # The subprocess published the step folder; reading it again returns its record.
    return _train_here(kind, config, Path(run_dir), model, inputs, iteration, None, None)


def _launch_command(config: RunConfig, spec_path: str) -> list[str]:
    n = config.runtime.num_processes
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n),
               "--num_machines", "1", "--dynamo_backend", "no"]
    if n > 1:
        # `--multi_gpu` starts n torchrun workers; on a CPU-only run each rank then picks gloo
        # (accelerate's `--cpu` with n > 1 expects mpirun and would start one process).
        command += ["--multi_gpu", "--main_process_port", str(_free_port())]
    elif steps.select_device(config.model.device).type == "cpu":
        command.append("--cpu")
    return command + ["-m", "flows.launch", spec_path]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    """Entry point of one `accelerate launch` rank: `python -m flows.launch SPEC.json`."""
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    config = RunConfig.model_validate(spec["config"])
    steps.set_torch_threads(config)
    # The process state is shared by every Accelerator made later (the trainer's included).
    PartialState(cpu=steps.select_device(config.model.device).type == "cpu")
    _train_here(
        spec["kind"],
        config,
        Path(spec["run_dir"]),
        StepRecord.model_validate(spec["model"]),
        StepRecord.model_validate(spec["inputs"]),
        spec["iteration"],
        spec["tracking_uri"],
        spec["run_id"],
    )


if __name__ == "__main__":
    main()
