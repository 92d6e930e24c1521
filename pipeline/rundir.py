"""A run's folder under `--output`: checked before anything is written, and the files that make it this run.

    <output>/                    mlflow.db, mlartifacts/, prefect/: the stores (never a run name)
      <run_name>/
        .lock                    pipeline.runlock
        .identity.json           who the run is: a random id (tagged on its MLflow runs), its MLflow
                                 parent run, the Prefect flow runs it ran as
        config.yaml              the resolved config; a resume must match it (`iterations` may rise)
        inputs.json              sha256 of every input file (pipeline.inputs)

The identity lives in the folder, not in the run name: another folder with the same run name on the
same tracking server is another run, and never adopts this one's MLflow runs or model versions.
"""

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dpo.files import write_json_atomic, write_text_atomic
from pipeline.config import ConfigError, RunConfig
from pipeline.tracking import flatten

__all__ = ["CONFIG_FILE", "IDENTITY_FILE", "RESERVED_NAMES", "RunDirError", "RunIdentity", "check_output_dir",
           "check_run_name", "check_saved_config", "read_identity", "saved_config", "write_config", "write_identity"]

CONFIG_FILE = "config.yaml"
IDENTITY_FILE = ".identity.json"
RESERVED_NAMES = ("prefect", "mlartifacts", "mlflow.db")  # entries of --output that are not runs
_RUN_FILES = {".lock", IDENTITY_FILE, "inputs.json", CONFIG_FILE}  # a folder holding only these is a run's


class RunDirError(ValueError):
    """`--output` or the run's folder in it cannot hold this run."""


@dataclass
class RunIdentity:
    """Who a run is, kept in `<run>/.identity.json`.

    `legacy` marks a folder started before runs had an identity: its MLflow runs carry no id tag,
    and it may adopt the untagged runs of its name once (they are then tagged).
    """

    run_uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    legacy: bool = False
    created: float = field(default_factory=time.time)
    mlflow: dict[str, str] = field(default_factory=dict)
    prefect_flow_runs: list[str] = field(default_factory=list)


def check_output_dir(output: Path) -> None:
    """`--output` is a directory this process can create runs in (or can be created).

    Raises:
        RunDirError: it is a file, or it (or the folder it would be created in) is not writable.
    """
    existing = next(p for p in (output, *output.parents) if os.path.lexists(p))
    if not existing.is_dir():
        what = "is a file" if existing == output else f"cannot be created: {existing} is a file"
        raise RunDirError(f"--output {output} {what}; give a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == output else f" (it would be created in {existing})"
        raise RunDirError(f"--output {output} is not writable{where}; give a directory you can write to")


def check_run_name(output: Path, run_name: str) -> None:
    """`<output>/<run_name>` is, or can become, this run's folder.

    Raises:
        RunDirError: the name is one of the stores' (`prefect`, `mlartifacts`, `mlflow.db`), or the
            path exists and is not a run folder.
    """
    folder = output / run_name
    if run_name in RESERVED_NAMES or run_name.startswith("mlflow.db"):  # sqlite's -journal/-wal files too
        raise RunDirError(f"run_name {run_name!r} is reserved: {folder} is where --output keeps "
                          f"{'the Prefect home' if run_name == 'prefect' else 'the MLflow store'}; choose another run_name")
    if folder.is_symlink() or (os.path.lexists(folder) and not folder.is_dir()):
        raise RunDirError(f"run_name {run_name!r}: {folder} exists and is not a run folder; choose another run_name")
    if folder.is_dir() and not (folder / CONFIG_FILE).is_file() and not {p.name for p in folder.iterdir()} <= _RUN_FILES:
        raise RunDirError(f"run_name {run_name!r}: {folder} exists and is not a run folder (no {CONFIG_FILE}); "
                          f"choose another run_name")


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a run saved (resolved, fields added since at their defaults), or None before it saved one."""
    saved = run_dir / CONFIG_FILE
    if not saved.is_file():
        return None
    previous = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    try:  # fields added since the run started count as their defaults, not as changes
        return RunConfig.model_validate(previous).model_dump(mode="json")
    except ValueError:
        return previous  # a field that no longer exists: compared as saved, so it is named as a change


def check_saved_config(run_dir: Path, config: RunConfig) -> int | None:
    """A resume must use the config the run started with (fields added since count as their defaults),
    except that `iterations` may be raised: the run continues from its last finished iteration.

    Returns:
        The saved `iterations` when `config` raises it (the run continues), else None.

    Raises:
        ConfigError: naming the changed fields, or a lowered `iterations`.
    """
    previous = saved_config(run_dir)
    if previous is None:
        return None
    old, new = flatten(previous), flatten(config.model_dump(mode="json"))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k != "iterations")
    if changed:
        raise ConfigError(
            f"run '{config.run_name}' in {run_dir.parent} was started with a different config "
            f"(changed: {', '.join(changed[:8])}); resume it with the same config (only `iterations` may be "
            f"raised, to continue it), or start a new run with --set run_name=<new name>"
        )
    before = previous.get("iterations")
    if not isinstance(before, int) or before == config.iterations:
        return None
    if config.iterations < before:
        raise ConfigError(
            f"run '{config.run_name}' in {run_dir.parent} has iterations={before}; it can be raised to continue "
            f"the run, not lowered to {config.iterations} (its later stages are in MLflow). Resume it with "
            f"--set iterations={before} or more")
    return before


def write_config(run_dir: Path, config: RunConfig, *, continued: bool = False) -> None:
    """Save the resolved config when the run starts (it marks the folder as a run's), and again when
    `continued` (its `iterations` raised: the only change a resume may make)."""
    saved = run_dir / CONFIG_FILE
    if continued or not saved.is_file():
        write_text_atomic(saved, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def read_identity(run_dir: Path) -> RunIdentity:
    """The identity of the run in `run_dir`: the saved one, else a new one (not written yet).

    Raises:
        RunDirError: the identity file exists but cannot be read.
    """
    path = run_dir / IDENTITY_FILE
    if not path.is_file():  # a folder with a config but no identity predates identities
        return RunIdentity(legacy=(run_dir / CONFIG_FILE).is_file())
    try:
        saved: Any = json.loads(path.read_text(encoding="utf-8"))
        return RunIdentity(**saved)
    except (OSError, ValueError, TypeError) as err:
        raise RunDirError(f"{path} cannot be read ({err}); it says which MLflow runs are this run's, so it "
                          f"is not replaced silently: restore it, or start a new run with --set run_name=<new>") from None


def write_identity(run_dir: Path, identity: RunIdentity) -> None:
    write_json_atomic(run_dir / IDENTITY_FILE, asdict(identity), durable=True)
