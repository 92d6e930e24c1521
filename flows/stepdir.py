"""Step folders: each step writes into a temporary folder and publishes it with a manifest.

The manifest records the step's input fingerprint, the sha256 of every file it wrote and a small
summary. A folder whose manifest matches the fingerprint is a finished step: a re-run returns its
record without recomputing. Anything else (no manifest, another fingerprint, a temp folder left by
a crash) is not complete and is rebuilt. The run directory, not the Prefect database, is the
source of truth, so resume works the same from the CLI, a deployment or a wiped Prefect home.
"""

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

MANIFEST = "manifest.json"
# Fault injection for resume tests: `SELFREWARD_FAIL_STEP=iter-2/dpo` fails that step before it runs.
FAIL_STEP_ENV = "SELFREWARD_FAIL_STEP"


class InjectedFault(RuntimeError):
    """Raised by a step named in $SELFREWARD_FAIL_STEP (tests of resume and retries)."""


class StepRecord(BaseModel):
    """What a step hands to the next one: where its outputs are and what they contain."""

    step: str
    path: str
    fingerprint: str
    files: dict[str, str] = {}
    summary: dict[str, Any] = {}


def fingerprint(*parts: Any) -> str:
    """A stable short hash of JSON-serialisable inputs (configs, upstream fingerprints, seeds)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _hash_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def finished(path: Path, step_fingerprint: str) -> StepRecord | None:
    """The record of a finished step at `path` with this fingerprint, else None."""
    try:
        record = StepRecord.model_validate_json((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return record if record.fingerprint == step_fingerprint else None


def run_step(
    step: str, path: Path, step_fingerprint: str, build: Callable[[Path], dict[str, Any]]
) -> tuple[StepRecord, bool]:
    """Run `build(tmp_dir) -> summary` unless the step at `path` already finished.

    `build` writes its outputs under `tmp_dir`, which does not exist yet (a writer that publishes
    its own folder atomically may create it); the manifest is written last, then `tmp_dir` is
    renamed to `path`.

    Returns:
        The step's record and whether it was computed now (False: reused from disk).
    """
    done = finished(path, step_fingerprint)
    if done is not None:
        return done, False
    if os.environ.get(FAIL_STEP_ENV) == f"{path.parent.name}/{step}":
        raise InjectedFault(f"injected failure in {path.parent.name}/{step} (${FAIL_STEP_ENV})")
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # `accelerate launch`: every rank computes, only the main rank publishes
        scratch = path.with_name(f".{path.name}.rank{rank}")
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            summary = build(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return StepRecord(step=step, path=str(path.resolve()), fingerprint=step_fingerprint, summary=summary), True
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a crashed attempt's leftovers
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = build(tmp)
    tmp.mkdir(exist_ok=True)
    record = StepRecord(
        step=step, path=str(path.resolve()), fingerprint=step_fingerprint, files=_hash_tree(tmp), summary=summary
    )
    _write_json_durably(tmp / MANIFEST, record.model_dump())
    stale = path.with_name(f".{path.name}.old")
    if path.exists():  # an unfinished or outdated folder: move it aside, publish, then delete it
        shutil.rmtree(stale, ignore_errors=True)
        path.rename(stale)
    tmp.rename(path)
    shutil.rmtree(stale, ignore_errors=True)
    return record, True


def _write_json_durably(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
