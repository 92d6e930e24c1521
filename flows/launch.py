"""Training and generation steps in the flow process, or as `accelerate launch` subprocesses.

`launch_sft` and `launch_dpo` are what the flows call to train. With `runtime.launcher: accelerate`
they write a small JSON spec and run `accelerate launch --num_processes N -m flows.launch SPEC`;
every rank runs the same step function, the main rank publishes the step folder, and the parent
reads its manifest. With several machines the spec is written into the run folder, where the
other machines' `selfreward join` finds it (`flows.join`). The ranks log their curves to the same
MLflow run (by id), so both paths look the same in the UI.

`data_parallel(step)` is a generation step (prompts, candidates, judging, evaluation) as
`runtime.parallel_generation` says: unchanged when it is off; else its models split every
`generate` call by bucket with one seed per bucket (`generation.DataParallelModel`), in the flow
process, or, with `launcher: accelerate` and several processes, on launched ranks that each decode
their share of the buckets and gather the rest, the same way as the training steps. The output is
the same for 1 and N processes.
"""

import contextlib
import functools
import inspect
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from accelerate import PartialState

from dpo.files import write_json_atomic
from flows import steps
from flows.stepdir import StepRecord, launch_rank
from generation import DataParallelModel, Shard
from pipeline.config import RunConfig, RuntimeConfig
from pipeline.lifeline import die_with_launcher, launcher_env
from pipeline.models import InferenceModel, select_device, set_torch_threads

LAUNCHES_DIR = ".launches"  # in the run folder: the specs of multi-machine launches (`flows.join`)
HEARTBEAT_SECONDS = 2.0  # a running launch touches its spec this often

# The steps a launched process may run, by name.
TRAINING_STEPS: dict[str, Callable[..., StepRecord]] = {fn.__name__: fn for fn in (steps.sft_step, steps.dpo_step)}

# The generation steps: each one's loaded-model arguments, and the record whose model each one holds.
GENERATION_STEPS: dict[Callable[..., StepRecord], dict[str, str]] = {
    steps.prompts_step: {"loaded": "model"},
    steps.candidates_step: {"loaded": "model", "anchor_loaded": "anchor"},
    steps.judge_step: {"loaded": "judge"},
    steps.meta_judge_step: {"loaded": "judge"},
    steps.consistency_step: {"loaded_previous": "previous"},
    steps.eval_step: {"loaded": "model"},
    steps.judge_health_step: {"loaded": "model"},
}
_GENERATION_BY_NAME = {fn.__name__: fn for fn in GENERATION_STEPS}


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
    _run_ranks(step, config, config, run_dir, curves, inputs)
    # The subprocess published the step folder; running the step again reads its record back.
    return _train_here(step, config, Path(run_dir), None, inputs)


def _run_ranks(step: Callable[..., StepRecord], config: RunConfig, launch: RunConfig, run_dir: Path,
               curves: CurveTarget | None, inputs: dict[str, Any]) -> None:
    """Run `step` on the ranks of an `accelerate launch` built from `launch.runtime`; returns once
    they are done (the main rank has published the step folder)."""
    spec = {"step": step.__name__, "config": config.model_dump(mode="json"), "run_dir": str(run_dir),
            "launch": launch.runtime.model_dump(mode="json"), "curves": curves,
            "inputs": {k: v.model_dump() if isinstance(v, StepRecord) else v for k, v in inputs.items()}}
    shared = launch.runtime.num_machines > 1
    spec_path = _write_spec(spec, Path(run_dir), step.__name__, shared)
    command = launch_command(launch, str(spec_path))
    # The agent and its ranks die with this process and never publish once it is gone.
    proc = subprocess.Popen(command, env={**os.environ, **launcher_env(run_dir)})
    try:
        while True:
            try:
                code = proc.wait(timeout=HEARTBEAT_SECONDS)
                break
            except subprocess.TimeoutExpired:
                spec_path.touch()  # the heartbeat: `selfreward join` only joins (and keeps) a live launch
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        spec_path.unlink(missing_ok=True)  # also tells the joined machines that this launch is over
        if shared:
            with contextlib.suppress(OSError):
                spec_path.parent.rmdir()  # once empty
    if code:
        raise subprocess.CalledProcessError(code, command)


def _write_spec(spec: dict[str, Any], run_dir: Path, step: str, shared: bool) -> Path:
    """A launch's spec file: a temporary file, or, for several machines, a file in the run folder's
    launch folder, where `selfreward join` on the other machines finds it (`flows.join`). The flow
    runs one launch at a time under the run lock, so a spec already there was left by a crash."""
    if not shared:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(spec, f)
        return Path(f.name)
    for stale in (run_dir / LAUNCHES_DIR).glob("*.json"):
        stale.unlink(missing_ok=True)
    return write_json_atomic(run_dir / LAUNCHES_DIR / f"{time.time_ns()}-{step}.json", spec)


def _train_here(step: Callable[..., StepRecord], config: RunConfig, run_dir: Path, curves: CurveTarget | None,
                inputs: dict[str, Any]) -> StepRecord:
    log_fn = None
    if curves is not None and launch_rank() == 0:
        from pipeline.tracking import Tracker  # MLflow: only the rank that logs imports it

        tracker = Tracker.from_config(curves.tracking_uri, config.tracking)
        log_fn = tracker.buffered_metrics(curves.run_id, config.tracking.metrics_flush_seconds)
    with log_fn or contextlib.nullcontext():  # leaving it sends the last curve points, also on failure
        return step(config, run_dir=run_dir, log_fn=log_fn, **inputs)


# ---------------------------------------------------------------- data-parallel generation


def launches_generation(runtime: RuntimeConfig) -> bool:
    """Whether the generation steps run on launched ranks (else in the flow process)."""
    return runtime.parallel_generation and runtime.launcher == "accelerate" and runtime.num_processes > 1


class _RanksNeeded(Exception):
    """A step asked for its model in the flow process although it is to run on launched ranks."""


class _OnRanks:
    """Stands in for a step's model in the flow process while the step belongs on launched ranks."""

    def get(self) -> tuple[Any, Any]:
        raise _RanksNeeded


class _ShardedModel:
    """A loaded model (`InferenceModel`) whose `generate` calls are split by bucket over `shard`."""

    def __init__(self, loaded: InferenceModel, shard: Shard) -> None:
        self.loaded, self.shard = loaded, shard
        self.parallel: DataParallelModel | None = None  # one per step, so its counts cover the step

    def get(self) -> tuple[DataParallelModel, Any]:
        model, tokenizer = self.loaded.get()
        if self.parallel is None:
            self.parallel = DataParallelModel(model, self.shard)
        return self.parallel, tokenizer


def data_parallel(step: Callable[..., StepRecord]) -> Callable[..., StepRecord]:
    """A generation step (a key of `GENERATION_STEPS`) as `runtime.parallel_generation` says, with
    the step's own signature (what Prefect reads).

    Off: the step as it is. On, in one process: its models generate bucket by bucket, one seed per
    bucket. On with `launcher: accelerate` and several processes: the step first runs here with
    stand-ins for its models, so a finished step reads its folder back and a step that needs no
    model (prompts drawn from the pool, an external reward) finishes without starting a process;
    the first time it asks for a model, it runs on `num_processes` launched ranks instead.
    """
    models, signature = GENERATION_STEPS[step], inspect.signature(step)

    @functools.wraps(step)
    def run(*args: Any, **kwargs: Any) -> StepRecord:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        inputs, config = dict(bound.arguments), bound.arguments["config"]
        if not config.runtime.parallel_generation:
            return step(**inputs)
        if not launches_generation(config.runtime):
            return step(**{**inputs, **_sharded_models(step, inputs, Shard())})
        with contextlib.suppress(_RanksNeeded):
            return step(**{**inputs, **_stand_ins(step, inputs)})
        plain = {k: v for k, v in inputs.items() if k not in ("config", "run_dir", *models)}
        _run_ranks(step, config, _generation_launch(config), inputs["run_dir"], None, plain)
        try:  # the ranks published the step folder: this reads its record back
            return step(**{**inputs, **_stand_ins(step, inputs)})
        except _RanksNeeded:
            raise RuntimeError(f"{step.__name__}: the launched ranks ended without publishing the step") from None

    return run


def _stand_ins(step: Callable[..., StepRecord], inputs: dict[str, Any]) -> dict[str, _OnRanks | None]:
    return {name: _OnRanks() if inputs.get(name) is not None or inputs.get(record) is not None else None
            for name, record in GENERATION_STEPS[step].items()}


def _sharded_models(step: Callable[..., StepRecord], inputs: dict[str, Any], shard: Shard) -> dict[str, _ShardedModel | None]:
    """The step's model arguments split over `shard`: the loaded models it was given, else those of
    their records (loaded on first use)."""
    sharded = {}
    for name, record in GENERATION_STEPS[step].items():
        loaded = inputs.get(name)
        if loaded is None and inputs.get(record) is not None:
            loaded = steps.inference_model(inputs["config"], inputs[record])
        sharded[name] = _ShardedModel(loaded, shard) if loaded is not None else None
    return sharded


def _generation_launch(config: RunConfig) -> RunConfig:
    """The launch settings of a generation step: the training launch's, without its accelerate config
    file (FSDP and DeepSpeed shard training; each generation rank holds the whole model)."""
    return config.model_copy(update={"runtime": config.runtime.model_copy(update={"accelerate_config": None})})


def launch_command(config: RunConfig, spec_path: str) -> list[str]:
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
    """Entry point of one `accelerate launch` rank: `python -m flows.launch SPEC.json` (a training or a
    generation step)."""
    die_with_launcher()
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    config = RunConfig.model_validate(spec["config"])
    set_torch_threads(config.runtime.torch_threads)
    # The process state is shared by every Accelerator made later (the trainer's included).
    state = PartialState(cpu=select_device(config.model.device).type == "cpu")
    inputs = {k: StepRecord.model_validate(v) if isinstance(v, dict) else v for k, v in spec["inputs"].items()}
    run_dir = Path(spec["run_dir"])
    if spec["step"] in TRAINING_STEPS:
        curves = CurveTarget(*spec["curves"]) if spec["curves"] else None
        _train_here(TRAINING_STEPS[spec["step"]], config, run_dir, curves, inputs)
        return
    step, shard = _GENERATION_BY_NAME[spec["step"]], Shard.from_process_group()
    if shard.world != state.num_processes:
        raise RuntimeError(f"{state.num_processes} processes were launched but {shard.world} share generation")
    models = _sharded_models(step, {"config": config, **inputs}, shard)
    step(config, run_dir=run_dir, **inputs, **models)
    # Each rank says what share it decoded: the evidence that the work was really split.
    for name, model in models.items():
        if model is not None and model.parallel is not None:
            print(f"flows.launch: rank {shard.rank}/{shard.world} {step.__name__} {name}: decoded "
                  f"{model.parallel.prompts_decoded} of {model.parallel.prompts_seen} prompts", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
