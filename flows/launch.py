"""Training steps in the flow process, or as `accelerate launch` subprocesses (multi-GPU).

`launch_sft` and `launch_dpo` are what the flows call. With `runtime.launcher: accelerate` they write
a small JSON spec and run `accelerate launch --num_processes N -m flows.launch SPEC`; every rank runs
the same step function, the main rank publishes the step folder, and the parent reads its manifest.
The ranks log their curves to the same MLflow run (by id), so both paths look the same in the UI.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from accelerate import PartialState

from flows import steps
from flows.stepdir import StepRecord, launch_rank
from pipeline.config import RunConfig
from pipeline.lifeline import die_with_launcher, launcher_env
from pipeline.models import select_device, set_torch_threads
from pipeline.tracking import Tracker

# The steps a launched process may run, by name.
TRAINING_STEPS: dict[str, Callable[..., StepRecord]] = {fn.__name__: fn for fn in (steps.sft_step, steps.dpo_step)}


class CurveTarget(NamedTuple):
    """Where a training step sends its curves: an MLflow store and the stage's run id."""

    tracking_uri: str
    run_id: str


def launch_sft(config: RunConfig, run_dir: Path, base: StepRecord, data: StepRecord,
               curves: CurveTarget | None = None) -> StepRecord:
    """SFT (M0 -> M1) as `runtime.launcher` says; see `steps.sft_step`."""
    return _launch(steps.sft_step, config, run_dir, curves, base=base, data=data)


def launch_dpo(config: RunConfig, iteration: int, run_dir: Path, model: StepRecord, pairs: StepRecord | None,
               data: StepRecord, consistency: StepRecord | None = None, skip: str | None = None,
               curves: CurveTarget | None = None) -> StepRecord:
    """One DPO round (M_t -> M_{t+1}) as `runtime.launcher` says; see `steps.dpo_step`."""
    return _launch(steps.dpo_step, config, run_dir, curves, iteration=iteration, model=model, pairs=pairs,
                   data=data, consistency=consistency, skip=skip)


def _launch(step: Callable[..., StepRecord], config: RunConfig, run_dir: Path, curves: CurveTarget | None,
            **inputs: Any) -> StepRecord:
    if config.runtime.launcher == "inprocess":
        return _train_here(step, config, Path(run_dir), curves, inputs)
    spec = {"step": step.__name__, "config": config.model_dump(mode="json"), "run_dir": str(run_dir),
            "curves": curves, "inputs": {k: v.model_dump() if isinstance(v, StepRecord) else v for k, v in inputs.items()}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:  # the agent and its ranks die with this process and never publish once it is gone
        subprocess.run(_launch_command(config, f.name), check=True, env={**os.environ, **launcher_env(run_dir)})
    finally:
        os.unlink(f.name)
    # The subprocess published the step folder; running the step again reads its record back.
    return _train_here(step, config, Path(run_dir), None, inputs)


def _train_here(step: Callable[..., StepRecord], config: RunConfig, run_dir: Path, curves: CurveTarget | None,
                inputs: dict[str, Any]) -> StepRecord:
    log_fn = None
    if curves is not None and launch_rank() == 0:
        tracker = Tracker.from_config(curves.tracking_uri, config.tracking)
        log_fn = tracker.buffered_metrics(curves.run_id, config.tracking.metrics_flush_seconds)
    with log_fn or contextlib.nullcontext():  # leaving it sends the last curve points, also on failure
        return step(config, run_dir=run_dir, log_fn=log_fn, **inputs)


def _launch_command(config: RunConfig, spec_path: str) -> list[str]:
    """The `accelerate launch` command line of a training step, from `runtime`.

    The process and machine settings always come from `runtime` (they win over the same keys of an
    `accelerate_config` file); the file decides the rest: the distributed type (FSDP, DeepSpeed,
    multi-GPU), its plugin settings and mixed precision. Without a file the distributed type is
    chosen here: `--multi_gpu` for several processes, `--cpu` for one on a CPU machine.
    """
    runtime = config.runtime
    n, machines = runtime.num_processes, runtime.num_machines
    # `pipeline.agent` is `accelerate launch` with a loopback rendezvous store binding only loopback.
    command = [sys.executable, "-m", "pipeline.agent", "--num_processes", str(n),
               "--num_machines", str(machines)]
    if runtime.accelerate_config is not None:
        # No --multi_gpu / --cpu: either flag would replace the file's distributed type.
        command += ["--config_file", runtime.accelerate_config]
    else:
        command += ["--dynamo_backend", "no"]
        if n > 1:
            # `--multi_gpu` starts n torchrun workers; on a CPU-only run each rank then picks gloo
            # (accelerate's `--cpu` with n > 1 expects mpirun and would start one process).
            command.append("--multi_gpu")
        elif select_device(config.model.device).type == "cpu":
            command.append("--cpu")
    if machines > 1:
        command += ["--machine_rank", str(runtime.machine_rank), "--main_process_ip", runtime.main_process_ip,
                    "--main_process_port", str(runtime.main_process_port or _DEFAULT_PORT)]
    elif n > 1:
        # One machine: the rendezvous stays on the loopback interface.
        command += ["--main_process_ip", runtime.main_process_ip or "127.0.0.1",
                    "--main_process_port", str(runtime.main_process_port or _free_port())]
    return command + ["-m", "flows.launch", spec_path]


_DEFAULT_PORT = 29500  # torch.distributed's usual rendezvous port: every machine must agree on it


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    """Entry point of one `accelerate launch` rank: `python -m flows.launch SPEC.json`."""
    die_with_launcher()
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    config = RunConfig.model_validate(spec["config"])
    set_torch_threads(config.runtime.torch_threads)
    # The process state is shared by every Accelerator made later (the trainer's included).
    PartialState(cpu=select_device(config.model.device).type == "cpu")
    inputs = {k: StepRecord.model_validate(v) if isinstance(v, dict) else v for k, v in spec["inputs"].items()}
    curves = CurveTarget(*spec["curves"]) if spec["curves"] else None
    _train_here(TRAINING_STEPS[spec["step"]], config, Path(spec["run_dir"]), curves, inputs)


if __name__ == "__main__":
    main()
