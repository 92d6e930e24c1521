"""Check a run's inputs before anything starts: data files, judge templates, reward functions, model,
and the vLLM environment when `engine.name` is vllm.

`check_inputs` runs right after the config is loaded (the CLI calls it before Prefect starts, the
flow again for callers of the Python API), so a mistake in an input file fails in about a second
with one message naming the config field, the file and the line, instead of minutes into a run.
Each problem raises the error class of the package that owns the format (`PromptFileError`,
`TemplateError`, `RewardFunctionError`, `ModelLoadError`, `EngineUnavailableError`); the CLI turns
them into exit code 2.

Prompts must fit where they are used: an IFT/EFT prompt under `sft.max_len` tokens, a seed or eval
prompt under the model's context. With `model.path` the model's own tokenizer counts them exactly;
the tiny model's tokenizer is trained by the run, so preflight counts byte-level pre-tokens (a lower
bound: BPE never merges across them) and the flow checks exact counts once the tokenizer exists
(`check_prompt_lengths`).
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenizers import pre_tokenizers

from generation import (
    EngineUnavailableError,
    PromptFileError,
    check_vllm_python,
    encode_chat_prompt,
    iter_jsonl,
    read_prompts,
)
from generation.vllm_engine import CPU_HEAD_DIMS
from judging import RewardFunctionError, TemplateError, load_reward_fn, load_template
from pipeline.config import RunConfig
from pipeline.models import ModelLoadError, check_model_dir, context_size

__all__ = ["check_inputs", "check_prompt_lengths"]

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
        PromptFileError: a data file is not JSONL, has an empty line, bad JSON, invalid UTF-8, a
            record without a non-empty string field, or a prompt too long for where it is used; the
            message names `data.<field>`, the file and the line.
        TemplateError: a judge template is missing or invalid (no placeholder, a score pattern
            that cannot read its own example, ...), naming the config field.
        RewardFunctionError: a `reward_fn` cannot be imported.
        ModelLoadError: `model.path` is not a usable model directory (a file, no config, no or
            truncated safetensors weights, no loadable tokenizer or no EOS token).
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
    tokenizer = None
    if config.model.path is not None:
        try:
            tokenizer = check_model_dir(config.model.path)
        except ModelLoadError as err:
            raise ModelLoadError(f"model.path: {err}") from None
    user_files = {name: Path(getattr(config.data, name)) for name in DATA_FIELDS if getattr(config.data, name)}
    check_prompt_lengths(config, user_files, tokenizer)
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


def check_prompt_lengths(config: RunConfig, files: dict[str, Path], tokenizer: Any | None = None) -> None:
    """Every prompt of the data files `files` ({"ift": path, ...}) fits where the run uses it.

    Args:
        config: the run config (limits: `sft.max_len`, the model's context).
        files: data file of each `data.<field>` to check.
        tokenizer: the model's tokenizer (exact counts); None counts pre-tokens, a lower bound.

    Raises:
        PromptFileError: naming `data.<field>`, the file, the line, the count and the limit.
    """
    limits = _length_limits(config)
    count, overhead = _token_counter(tokenizer)
    for name, path in files.items():
        if name not in limits:
            continue
        limit, what = limits[name]
        for line, row in enumerate(iter_jsonl(path), start=1):
            prompt = row.get("prompt") if isinstance(row, dict) else None
            # A token holds at least one byte, so only long prompts are worth counting.
            if not isinstance(prompt, str) or len(prompt.encode()) + overhead < limit:
                continue
            if (tokens := count(prompt)) >= limit:
                at_least = "" if tokenizer is not None else "at least "
                raise PromptFileError(
                    f"data.{name}: {_user_file(config, name, path)}:{line}: the prompt has {at_least}{tokens:,} "
                    f"tokens; {what} allows at most {limit - 1}. Shorten or drop it")


def _user_file(config: RunConfig, name: str, path: Path) -> Path:
    """The user's file behind a run's copy of `data.<name>` (the copy itself for generated data)."""
    return Path(getattr(config.data, name) or path)


def _length_limits(config: RunConfig) -> dict[str, tuple[int, str]]:
    """{data field: (token limit a prompt must stay under, what sets it)}."""
    context = config.model.tiny.max_position_embeddings if config.model.path is None else context_size(config.model.path)
    limits = {}
    if config.sft.enabled:
        limits["ift"] = limits["eft"] = (config.sft.max_len, f"sft.max_len ({config.sft.max_len})")
    if context:
        limits["seed_prompts"] = limits["eval_prompts"] = (context, f"the model's context ({context} tokens)")
    return limits


def _token_counter(tokenizer: Any | None) -> tuple[Callable[[str], int], int]:
    """(tokens of a chat prompt holding a text, how many of them the chat template adds at most)."""
    if tokenizer is not None:
        return (lambda text: len(encode_chat_prompt(tokenizer, text))), len(encode_chat_prompt(tokenizer, "")) + 1
    pieces = pre_tokenizers.ByteLevel(add_prefix_space=False)  # the tiny tokenizer's pre-tokenizer
    return (lambda text: len(pieces.pre_tokenize_str(text))), 0


def _judge_sections(config: RunConfig) -> dict:
    sections = {"iteration.judge": config.iteration.judge}
    for iteration in sorted(config.overrides):  # iterations without overrides use `iteration.judge`
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
