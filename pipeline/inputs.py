"""The content of a run's input files: what a resumed run reads must be what the run read before.

Input files are `data.ift`, `data.eft`, `data.seed_prompts`, `data.eval_prompts`, every judge
template given as a file (`iteration.judge.template`, `overrides.<i>.judge.template`) and the module
file of a local `reward_fn` (one outside site-packages and the standard library). Their sha256 enter
the fingerprints of the steps that read them, so a changed file is never served from a stale copy,
and `<run>/inputs.json`, so that a resume can name the file that changed (`changed_inputs`).
"""

import importlib.util
import json
import sysconfig
from pathlib import Path

from dpo.files import sha256_file, write_json_atomic
from judging import PACKAGED_TEMPLATES
from pipeline.config import DataConfig, JudgeConfig, RunConfig

__all__ = ["INPUTS_FILE", "InputChangedError", "changed_inputs", "data_digests", "input_files", "judge_digests", "write_inputs"]

INPUTS_FILE = "inputs.json"
DATA_FIELDS = ("ift", "eft", "seed_prompts", "eval_prompts")


class InputChangedError(ValueError):
    """An input file changed after a stage of the run had trained on it."""


def _judge_files(judge: JudgeConfig) -> dict[str, Path]:
    files = {} if judge.template in PACKAGED_TEMPLATES else {"template": Path(judge.template)}
    module = reward_module_file(judge.reward_fn) if judge.reward_fn else None
    return files | ({"reward_fn": module} if module else {})


def reward_module_file(reward_fn: str) -> Path | None:
    """The source file of a `reward_fn`'s module when it is the user's own code, else None."""
    try:
        spec = importlib.util.find_spec(reward_fn.partition(":")[0].strip())
    except (ImportError, ValueError):
        return None
    origin = Path(spec.origin) if spec is not None and spec.origin and spec.origin.endswith(".py") else None
    installed = (Path(sysconfig.get_paths()["stdlib"]),)
    if origin is None or {"site-packages", "dist-packages"} & set(origin.parts) or origin.is_relative_to(*installed):
        return None
    return origin


def input_files(config: RunConfig) -> dict[str, Path]:
    """{config field: file} of every input file the run reads."""
    files = {f"data.{name}": Path(getattr(config.data, name)) for name in DATA_FIELDS if getattr(config.data, name)}
    judges = {"iteration.judge": config.iteration.judge}
    judges.update({f"overrides.{i}.judge": config.iteration_config(i).judge for i in sorted(config.overrides)})
    for section, judge in judges.items():
        files.update({f"{section}.{name}": path for name, path in _judge_files(judge).items()})
    return files


def data_digests(data: DataConfig) -> list[str]:
    """`field:sha256` of each of the user's data files (none for generated data), for the data step's fingerprint."""
    return [f"{name}:{sha256_file(Path(getattr(data, name)))}" for name in DATA_FIELDS if getattr(data, name)]


def judge_digests(judge: JudgeConfig) -> list[str]:
    """sha256 of a judge's template file and local reward module (empty for the packaged ones)."""
    return [sha256_file(path) for path in _judge_files(judge).values()]


def _digests(config: RunConfig) -> dict[str, dict[str, str]]:
    return {field: {"path": str(path), "sha256": sha256_file(path)} for field, path in input_files(config).items()}


def changed_inputs(run_dir: Path, config: RunConfig) -> list[str]:
    """`field[, field] (path)` of every input file whose content differs from what `<run>/inputs.json`
    recorded (the fields that name the same file together)."""
    try:
        recorded = json.loads((run_dir / INPUTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # a run started before inputs were recorded: its step fingerprints still notice
    changed: dict[str, list[str]] = {}
    for field, now in _digests(config).items():
        if field in recorded and recorded[field].get("sha256") != now["sha256"]:
            changed.setdefault(now["path"], []).append(field)
    return [f"{', '.join(fields)} ({path})" for path, fields in changed.items()]


def write_inputs(run_dir: Path, config: RunConfig) -> None:
    """Record the sha256 of every input file the run reads now."""
    write_json_atomic(run_dir / INPUTS_FILE, _digests(config))
