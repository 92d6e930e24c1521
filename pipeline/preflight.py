"""Check a run's inputs before anything starts: data files, judge templates, reward functions, model.

`check_inputs` runs right after the config is loaded (the CLI calls it before Prefect starts, the
flow again for callers of the Python API), so a mistake in an input file fails in about a second
with one message naming the config field, the file and the line, instead of minutes into a run.
Each problem raises the error class of the package that owns the format (`PromptFileError`,
`TemplateError`, `RewardFunctionError`, `ModelLoadError`); the CLI turns them into exit code 2.
"""

from pathlib import Path

from generation import PromptFileError, read_prompts
from judging import RewardFunctionError, TemplateError, load_reward_fn, load_template
from pipeline.config import RunConfig
from pipeline.models import ModelLoadError, check_model_dir

__all__ = ["check_inputs"]

# Data files and the string fields each record needs (prepare_data copies them as JSONL).
DATA_FIELDS: dict[str, tuple[str, ...]] = {
    "ift": ("prompt", "response"),
    "eft": ("prompt", "response"),
    "seed_prompts": ("prompt",),
    "eval_prompts": ("prompt",),
}


def check_inputs(config: RunConfig) -> None:
    """Validate every input a run will read; returns quietly when all are usable.

    Raises:
        PromptFileError: a data file is not JSONL, has an empty line, bad JSON, invalid UTF-8, or a
            record without a non-empty string field; the message names `data.<field>`, the file
            and the line.
        TemplateError: a judge template is missing or invalid (no placeholder, a score pattern
            that cannot read its own example, ...), naming the config field.
        RewardFunctionError: a `reward_fn` cannot be imported.
        ModelLoadError: `model.path` is not a usable model directory (no config, no safetensors
            weights, no tokenizer or no EOS token).
    """
    for name, fields in DATA_FIELDS.items():
        path = getattr(config.data, name)
        if path is not None:
            _check_jsonl(f"data.{name}", Path(path), fields)
    for field, judge in _judge_sections(config).items():
        if judge.reward_fn:
            try:
                load_reward_fn(judge.reward_fn)
            except RewardFunctionError as err:
                raise RewardFunctionError(f"{field}.reward_fn: {err}") from None
        try:
            load_template(judge.template)  # evaluation judges with it even when reward_fn is set
        except TemplateError as err:
            raise TemplateError(f"{field}.template: {err}") from None
    if config.model.path is not None:
        try:
            check_model_dir(config.model.path)
        except ModelLoadError as err:
            raise ModelLoadError(f"model.path: {err}") from None


def _judge_sections(config: RunConfig) -> dict:
    sections = {"iteration.judge": config.iteration.judge}
    for iteration in range(1, config.iterations + 1):
        judge = config.iteration_config(iteration).judge
        if judge != config.iteration.judge:
            sections[f"overrides.{iteration}.judge"] = judge
    return sections


def _check_jsonl(field: str, path: Path, fields: tuple[str, ...]) -> None:
    if path.suffix.lower() != ".jsonl":
        raise PromptFileError(f"{field}: {path}: expected a .jsonl file (one JSON object per line)")
    try:
        for name in fields:
            read_prompts(path, field=name)  # line numbers for empty lines, bad JSON, bad UTF-8, missing fields
    except PromptFileError as err:
        raise PromptFileError(f"{field}: {err}") from None
    except OSError as err:
        raise PromptFileError(f"{field}: {path}: cannot read ({err.strerror})") from None
