"""The other machines' half of a multi-machine run: `selfreward join RUN --machine-rank K`.

With `runtime.num_machines` > 1 the flow runs on machine 0 and starts each launched step (SFT, DPO,
data-parallel generation) there with `--machine_rank 0`; its `accelerate launch` then waits until
every machine has joined the rendezvous at `main_process_ip:main_process_port`. The flow also writes
the step's spec into the run folder (`<run>/.launches/`, which every machine must see: a shared file
system), and `join_launches` on machine K starts the same launch from it with `--machine_rank K`.

A spec is removed once machine 0's launch has ended: a joined launch whose spec is gone is stopped
after a grace period (machine 0 failed, or finished without it), so it never waits for a peer forever.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flows.launch import LAUNCHES_DIR, launch_command
from pipeline.config import RunConfig, RuntimeConfig
from pipeline.lifeline import launcher_env

__all__ = ["join_launches"]

POLL_SECONDS = 1.0  # how often the run's launch folder is looked at
ORPHAN_GRACE_SECONDS = 30.0  # a joined launch outlives its spec this long before it is stopped


def join_launches(run_dir: str | os.PathLike, machine_rank: int) -> None:
    """Join every launch the run at `run_dir` publishes, one at a time, until interrupted.

    Args:
        run_dir: The run folder (`<output>/<run_name>`), as this machine sees it.
        machine_rank: This machine's rank, 1 .. num_machines - 1.
    """
    launches, seen = Path(run_dir) / LAUNCHES_DIR, set()
    while True:
        pending = sorted(p for p in launches.glob("*.json") if p.name not in seen) if launches.is_dir() else []
        for spec_path in pending:
            seen.add(spec_path.name)
            print(f"joining {spec_path.name} as machine {machine_rank}", flush=True)
            print(f"{spec_path.name}: exit {_join(spec_path, machine_rank, Path(run_dir))}", flush=True)
        if not pending:
            time.sleep(POLL_SECONDS)


def _join(spec_path: Path, machine_rank: int, run_dir: Path) -> int:
    """Run the launch of `spec_path` with this machine's rank; returns its exit code."""
    try:
        spec = json.loads(spec_path.read_text())
    except FileNotFoundError:
        return 0  # machine 0's launch ended before this machine saw it
    runtime = RuntimeConfig.model_validate({**spec["launch"], "machine_rank": machine_rank})
    config = RunConfig.model_validate(spec["config"]).model_copy(update={"runtime": runtime})
    proc = subprocess.Popen(launch_command(config, str(spec_path)), env={**os.environ, **launcher_env(run_dir)},
                            start_new_session=True)
    gone_since = None
    while proc.poll() is None:
        time.sleep(1.0)
        if spec_path.exists():
            gone_since = None
        elif gone_since is None:
            gone_since = time.monotonic()
        elif time.monotonic() - gone_since > ORPHAN_GRACE_SECONDS:
            os.killpg(proc.pid, signal.SIGTERM)
            print(f"selfreward join: {spec_path.name} ended on machine 0; stopped this machine's ranks",
                  file=sys.stderr, flush=True)
            return proc.wait()
    return proc.returncode
