"""Step folders: each step writes into a temporary folder and publishes it with a manifest.

The manifest records the step's input fingerprint, the sha256 of every file it wrote and a small
summary. A folder whose manifest matches the fingerprint is a finished step: a re-run returns its
record without recomputing. Anything else (no manifest, another fingerprint, a temp folder left by
a crash) is not complete and is rebuilt. The run directory, not the Prefect database, is the
source of truth, so resume works the same from the CLI, a deployment or a wiped Prefect home.

Also here: where a step's folder is (`iter_dir`, `model_dir`) and the seed of each step of an
iteration (`step_seed` with a named `Salt`).
"""

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from enum import IntEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from dpo.files import publish_dir, sha256_file, write_json_atomic
from pipeline.lifeline import check_launcher_alive

MANIFEST = "manifest.json"
MODEL_DIR = "model"  # the `from_pretrained` folder inside a model-producing step's folder


# Fault injection for resume tests: `SELFREWARD_FAIL_STEP=iter-2/dpo` fails that step before it runs.
FAIL_STEP_ENV = "SELFREWARD_FAIL_STEP"
# Crash tests: `SELFREWARD_PAUSE_STEP=iter-1/candidates` makes that step stop just before it publishes
# (outputs and manifest written to its temp folder), write $SELFREWARD_PAUSE_MARKER (JSON with the
# pid) and wait while that file exists, so a test can SIGKILL the run at a known point, or delete
# the marker to let it go on. `iter-1/dpo@2` pauses DPO training after optimizer step 2.
PAUSE_STEP_ENV = "SELFREWARD_PAUSE_STEP"
PAUSE_MARKER_ENV = "SELFREWARD_PAUSE_MARKER"
_PAUSE_LIMIT_SECONDS = 600
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


class InjectedFault(RuntimeError):
    """Raised by a step named in $SELFREWARD_FAIL_STEP (tests of resume and retries)."""


class DiskFullError(RuntimeError):
    """A step could not write its outputs: no space left (or a file size limit) on the device."""


def launch_rank() -> int:
    """This process's rank under `accelerate launch` (0 when not launched by it)."""
    return int(os.environ.get("RANK", "0"))


def pause_point(name: str, default_marker: Path) -> None:
    """Pause here when $SELFREWARD_PAUSE_STEP names this point (see PAUSE_STEP_ENV)."""
    if os.environ.get(PAUSE_STEP_ENV) != name or launch_rank() != 0:
        return
    marker = Path(os.environ.get(PAUSE_MARKER_ENV) or default_marker / ".paused")
    write_json_atomic(marker, {"pid": os.getpid(), "point": name})  # the test never reads a half-written marker
    deadline = time.monotonic() + _PAUSE_LIMIT_SECONDS
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


class StepRecord(BaseModel):
    """What a step hands to the next one: where its outputs are and what they contain."""

    step: str
    path: str
    fingerprint: str
    files: dict[str, str] = {}
    summary: dict[str, Any] = {}


class Salt(IntEnum):
    """Offsets that give each step of an iteration its own random stream (values fixed: changing
    one changes that step's outputs)."""

    PROMPTS = 1
    CANDIDATES = 2
    JUDGE = 3
    DPO = 4
    PAIRS = 5
    META_JUDGE = 6
    CONSISTENCY = 7


def step_seed(run_seed: int, iteration: int, salt: Salt) -> int:
    """The seed of one step of one iteration of a run seeded `run_seed`."""
    return run_seed * 1_000_003 + iteration * 101 + salt


def iter_dir(run_dir: Path, iteration: int) -> Path:
    return run_dir / f"iter-{iteration}"


def model_dir(record: StepRecord) -> Path:
    """The `from_pretrained` directory a model-producing step wrote (or the user's model path)."""
    path = Path(record.path)
    return path / MODEL_DIR if (path / MODEL_DIR).is_dir() else path


def fingerprint(*parts: Any) -> str:
    """A stable short hash of JSON-serialisable inputs (configs, upstream fingerprints, seeds)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _hash_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def finished(path: Path, step_fingerprint: str) -> StepRecord | None:
    """The record of a finished step at `path` with this fingerprint, else None.

    The record points at `path` as it is now: the manifest keeps the absolute path it was written
    at, and an output folder moved since must not lead the run back into the old location.
    """
    try:
        record = StepRecord.model_validate_json((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if record.fingerprint != step_fingerprint:
        return None
    return record.model_copy(update={"path": str(path.resolve())})


def _is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError):
        return err.errno in _DISK_FULL
    # safetensors (Rust) reports I/O errors as SafetensorError("... (os error 28)").
    return any(f"(os error {code})" in str(err) for code in _DISK_FULL)


def run_step(step: str, path: Path, step_fingerprint: str, build: Callable[[Path], dict[str, Any]]) -> StepRecord:
    """Run `build(tmp_dir) -> summary` unless the step at `path` already finished; returns its record.

    `build` writes its outputs under `tmp_dir`, which does not exist yet (a writer that publishes
    its own folder atomically may create it); the manifest is written last, then `tmp_dir` replaces
    `path` (`dpo.publish_dir`).

    Raises:
        DiskFullError: the outputs did not fit on the device (the temp folder is removed, an older
            folder at `path` is left as it was).
    """
    done = finished(path, step_fingerprint)
    if done is not None:
        return done
    if os.environ.get(FAIL_STEP_ENV) == f"{path.parent.name}/{step}":
        raise InjectedFault(f"injected failure in {path.parent.name}/{step} (${FAIL_STEP_ENV})")
    rank = launch_rank()
    if rank != 0:  # `accelerate launch`: every rank computes, only the main rank publishes
        scratch = path.with_name(f".{path.name}.rank{rank}")
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            summary = build(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return StepRecord(step=step, path=str(path.resolve()), fingerprint=step_fingerprint, summary=summary)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a crashed attempt's leftovers
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        summary = build(tmp)
        tmp.mkdir(exist_ok=True)
        record = StepRecord(
            step=step, path=str(path.resolve()), fingerprint=step_fingerprint, files=_hash_tree(tmp), summary=summary
        )
        write_json_atomic(tmp / MANIFEST, record.model_dump(), durable=True)
    except Exception as err:
        if not _is_disk_full(err):
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back; earlier steps stay as they are
        raise DiskFullError(
            f"step {path.parent.name}/{step} could not write its outputs under {path.parent}: {err}. "
            f"Free some space there and run the same command again: finished steps are kept and this "
            f"one restarts"
        ) from err
    pause_point(f"{path.parent.name}/{step}", path.parent)
    check_launcher_alive()  # a launched rank whose run is gone must not publish into the run folder
    publish_dir(tmp, path)
    return record
