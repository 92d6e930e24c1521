"""The other machines' half of a multi-machine run: `selfreward join RUN --machine-rank K`.

With `runtime.num_machines` > 1 the flow runs on machine 0 and starts each launched step (SFT, DPO,
data-parallel generation) there with `--machine_rank 0`; its `accelerate launch` then waits until
every machine has joined the rendezvous at `main_process_ip:main_process_port`. The flow also writes
the step's spec into the run folder (`<run>/.launches/`, which every machine must see: a shared file
system), and `join_launches` on machine K starts the same launch from it with `--machine_rank K`.

Machine 0 touches a spec every `HEARTBEAT_SECONDS` while its launch runs and removes it when the
launch ends. A machine joins only a spec it has seen touched (one left behind by a crashed flow is
never joined), and stops a joined launch whose spec is gone or untouched for `ORPHAN_GRACE_SECONDS`
(machine 0 failed, or finished without it), so it never waits for a peer forever. Staleness is read
from changes this machine observes, not from comparing clocks across machines.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from flows.launch import LAUNCHES_DIR, launch_command
from pipeline.config import RunConfig, RuntimeConfig
from pipeline.lifeline import launcher_env

__all__ = ["JoinError", "join_launches"]

POLL_SECONDS = 1.0  # how often the run's launch folder is looked at
ORPHAN_GRACE_SECONDS = 30.0  # a joined launch outlives its spec (or its heartbeat) this long


class JoinError(ValueError):
    """This machine cannot take part in the run's launches (a wrong rank or folder); nothing was started."""


def join_launches(run_dir: str | os.PathLike, machine_rank: int) -> None:
    """Join every live launch the run at `run_dir` publishes, one at a time, until interrupted.

    Args:
        run_dir: The run folder (`<output>/<run_name>`), at the same absolute path as on machine 0.
        machine_rank: This machine's rank, 1 .. num_machines - 1.

    Raises:
        JoinError: `machine_rank` does not fit the run, or the spec names another run folder.
    """
    run_dir = Path(run_dir).resolve()
    launches, first_seen, joined = run_dir / LAUNCHES_DIR, {}, set()
    if not run_dir.is_dir():
        print(f"selfreward join: {run_dir} does not exist yet; waiting for the run to start it", flush=True)
    while True:
        for spec_path in sorted(launches.glob("*.json")) if launches.is_dir() else []:
            stamp = _mtime(spec_path)
            if spec_path.name in joined or stamp is None:
                continue
            if first_seen.setdefault(spec_path.name, stamp) == stamp:
                continue  # not touched since this machine first saw it: not (yet) known to be live
            joined.add(spec_path.name)
            print(f"joining {spec_path.name} as machine {machine_rank}", flush=True)
            print(f"{spec_path.name}: exit {_join(spec_path, machine_rank, run_dir)}", flush=True)
        time.sleep(POLL_SECONDS)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _launch(spec_path: Path, machine_rank: int, run_dir: Path) -> list[str] | None:
    """The launch command of `spec_path` for this machine; None if the spec is already gone."""
    try:
        spec = json.loads(spec_path.read_text())
    except FileNotFoundError:
        return None  # machine 0's launch ended before this machine read it
    if Path(spec["run_dir"]).resolve() != run_dir:
        raise JoinError(f"the run writes to {spec['run_dir']} but this machine joined {run_dir}: every machine "
                        f"needs the run folder at the same absolute path (a shared file system)")
    try:
        runtime = RuntimeConfig.model_validate({**spec["launch"], "machine_rank": machine_rank})
    except ValidationError:
        raise JoinError(f"--machine-rank {machine_rank}: this run has num_machines {spec['launch']['num_machines']}, "
                        f"so the other machines are 1 .. {spec['launch']['num_machines'] - 1}") from None
    return launch_command(RunConfig.model_validate(spec["config"]).model_copy(update={"runtime": runtime}),
                          str(spec_path))


def _join(spec_path: Path, machine_rank: int, run_dir: Path) -> int:
    """Run the launch of `spec_path` with this machine's rank; returns its exit code."""
    command = _launch(spec_path, machine_rank, run_dir)
    if command is None:
        return 0
    proc = subprocess.Popen(command, env={**os.environ, **launcher_env(run_dir)}, start_new_session=True)
    stamp, changed = _mtime(spec_path), time.monotonic()
    while proc.poll() is None:
        time.sleep(POLL_SECONDS)
        now = _mtime(spec_path)
        if now is not None and now != stamp:
            stamp, changed = now, time.monotonic()
        elif time.monotonic() - changed > ORPHAN_GRACE_SECONDS:
            print(f"selfreward join: {spec_path.name} ended on machine 0; stopping this machine's ranks",
                  file=sys.stderr, flush=True)
            return _stop(proc)
    return proc.returncode


def _stop(proc: subprocess.Popen) -> int:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=ORPHAN_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()
