"""Check a run's inputs before anything starts: data files, judge templates, reward functions, model,
and the vLLM environment when `engine.name` is vllm.

`check_inputs` runs right after the config is loaded (the CLI calls it before Prefect starts, the
flow again for callers of the Python API), so a mistake in an input file fails in about a second
with one message naming the config field, the file and the line, instead of minutes into a run.
Each problem raises the error class of the package that owns the format (`PromptFileError`,
`TemplateError`, `RewardFunctionError`, `ModelLoadError`, `EngineUnavailableError`); the CLI turns
them into exit code 2.
"""

import json
from pathlib import Path

from generation import EngineUnavailableError, PromptFileError, check_vllm_python, read_prompts
from generation.vllm_engine import CPU_HEAD_DIMS
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
        EngineUnavailableError: `engine.name` is vllm but its virtualenv is missing, or the model's
            head size is one vLLM's CPU attention does not support (on a machine without CUDA).
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
    if config.engine.name == "vllm":
        _check_vllm(config)


def _check_vllm(config: RunConfig) -> None:
    import torch

    try:
        check_vllm_python(config.engine.python)
    except EngineUnavailableError as err:
        raise EngineUnavailableError(f"engine.python: {err}") from None
    size, source = _head_dim(config)
    if size is not None and size not in CPU_HEAD_DIMS and not torch.cuda.is_available():
        raise EngineUnavailableError(
            f"engine.name: vllm: the model's attention head size is {size} ({source}), but vLLM's CPU "
            f"attention supports only {', '.join(map(str, CPU_HEAD_DIMS))} (e.g. model.tiny.num_heads=2 "
            "with hidden_size 64), or use engine.name: native"
        )


def _head_dim(config: RunConfig) -> tuple[int | None, str]:
    """The model's attention head size and where it comes from."""
    if config.model.path is None:
        tiny = config.model.tiny
        return tiny.hidden_size // tiny.num_heads, "model.tiny.hidden_size / model.tiny.num_heads"
    path = Path(config.model.path) / "config.json"
    try:
        model = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, str(path)  # the model loader reports it
    model = model.get("text_config", model)
    heads, hidden = model.get("num_attention_heads"), model.get("hidden_size")
    return model.get("head_dim") or (hidden // heads if heads and hidden else None), str(path)


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
