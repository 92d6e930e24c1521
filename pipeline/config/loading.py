"""Reading a run config: a YAML file (or the embedded default) plus `--set` overrides, validated.

An error names where the bad value came from: the config file, or the `--set KEY=VALUE` argument
that set it.
"""

import json
from collections.abc import Iterable
from pathlib import Path

import yaml
from pydantic import ValidationError

from pipeline.config.schema import (
    ConfigError,
    DataConfig,
    RunConfig,
    RuntimeConfig,
    _clip,
    deep_merge,
    format_errors,
)
from pipeline.config.strict_yaml import load_strict

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
# A run config is a few KB; parsing megabytes of YAML takes seconds and would only be echoed back.
MAX_CONFIG_BYTES = 1 << 20
MAX_SET_CHARS = 1 << 16


def _key_path(key: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in key.strip().split("."))


def parse_overrides(pairs: list[str]) -> dict:
    """Turn `--set a.b=c` strings into a nested mapping; values are parsed as YAML scalars."""
    result: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        parts = _key_path(key) if sep else ()
        if not parts or "" in parts:
            raise ConfigError(f"--set {_clip(repr(pair))}: expected KEY=VALUE, e.g. --set iteration.dpo.beta=0.2")
        if len(pair) > MAX_SET_CHARS:
            raise ConfigError(f"--set {_clip(repr(pair))}: longer than {MAX_SET_CHARS:,} characters; config values are short")
        try:
            value = load_strict(raw) if raw else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {pair!r}: value is not valid YAML ({err})") from None
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {pair!r}: {'.'.join(map(str, parts))} is inside a field another --set "
                                  f"already gave a value")
        node[parts[-1]] = value
    return result


def _read_yaml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            blob = f.read(MAX_CONFIG_BYTES + 1)
        text = blob.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config ({err})") from None
    if len(blob) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: config file is larger than {MAX_CONFIG_BYTES >> 20} MiB; a run config is a few KB")
    try:
        data = load_strict(text)  # safe loader: no Python-object tags, no duplicate keys, no alias bombs
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read, merge `--set` overrides into, and validate a run config.

    Args:
        path: a YAML file; `None` means the embedded default, `configs/demo.yaml`.
        overrides: `KEY=VALUE` strings applied on top of the file.

    Raises:
        ConfigError: naming the file, the field path and what is expected.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    overrides = list(overrides or [])
    raw = deep_merge(_read_yaml(path), parse_overrides(overrides))
    _resolve_relative_paths(raw, path.parent)
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as err:
        sources = _sources(path, overrides, [e["loc"] for e in err.errors()])
        raise ConfigError(f"{sources}: invalid config\n" + format_errors(err)) from None
    except ValueError as err:  # raised by iteration_config() with its own field path
        raise ConfigError(f"{path}: invalid config\n{err}") from None
    config = config.model_copy(update={"data": _resolve_data_paths(config.data, path, overrides),
                                       "runtime": _resolve_accelerate_config(config.runtime, path)})
    _check_launch_settings(config, path)
    return config


def _sources(path: Path, overrides: list[str], locs: Iterable[tuple]) -> str:
    """Where the fields at `locs` were set: the `--set` arguments that set them, else the file."""
    named: list[str] = []
    for loc in locs:
        hits = [f"--set {_clip(pair)}" for pair in overrides if _overlaps(_key_path(pair.partition("=")[0]), tuple(loc))]
        for source in hits or [str(path)]:  # an error of the whole config (no field) is the file's
            if source not in named:
                named.append(source)
    return " and ".join(named) or str(path)


def _overlaps(a: tuple, b: tuple) -> bool:
    return bool(a and b) and a[:len(b)] == b[:len(a)]


def _sections(raw: dict) -> list:
    overrides = raw.get("overrides")
    if isinstance(overrides, dict):
        return [raw.get("iteration"), *overrides.values()]
    return [raw.get("iteration"), *(overrides if isinstance(overrides, list) else [])]


def _resolve_relative_paths(raw: dict, base: Path) -> None:
    # A judge template or model directory named relative to the config file is found from any CWD.
    for section in _sections(raw):
        judge = section.get("judge") if isinstance(section, dict) else None
        if isinstance(judge, dict) and isinstance(judge.get("template"), str) and judge["template"] != "default":
            candidate = base / judge["template"]
            if candidate.is_file():
                judge["template"] = str(candidate.resolve())
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("path"), str) and (base / model["path"]).is_dir():
        model["path"] = str((base / model["path"]).resolve())


def _resolve_accelerate_config(runtime: RuntimeConfig, config_path: Path) -> RuntimeConfig:
    # Relative to the config file like the data files; absolute, so the launch works from any directory.
    if runtime.accelerate_config is None:
        return runtime
    resolved = (config_path.parent / runtime.accelerate_config).resolve()
    if not resolved.is_file():
        raise ConfigError(f"{config_path}: runtime.accelerate_config: file not found: {resolved}")
    return runtime.model_copy(update={"accelerate_config": str(resolved)})


def _check_launch_settings(config: RunConfig, path: Path) -> None:
    """What the launches cannot do, refused before anything runs (on GPUs a launch fails late and on
    every rank): a run config that is not machine 0, and features sharded weights do not support."""
    runtime = config.runtime
    if runtime.machine_rank != 0:
        raise ConfigError(f"{path}: runtime.machine_rank is {runtime.machine_rank}, but `selfreward run` is always "
                          f"machine 0: start the other machines with `selfreward join {config.run_name} --machine-rank K`")
    sharding = _sharding(Path(runtime.accelerate_config)) if runtime.accelerate_config else None
    if sharding is None:
        return
    refused = ["model.lora.enabled"] if config.model.lora.enabled else []
    if any(config.iteration_config(i).dpo.checkpoint_every for i in range(1, config.iterations + 1)):
        refused.append("iteration.dpo.checkpoint_every")
    if refused:
        raise ConfigError(f"{path}: runtime.accelerate_config {runtime.accelerate_config} shards the weights "
                          f"({sharding}), which {' and '.join(refused)} do not support yet: use plain data "
                          f"parallelism (DDP, ZeRO-1/2) for them")


def _sharding(accelerate_file: Path) -> str | None:
    """"FSDP2" or "DeepSpeed ZeRO-3" when the accelerate config file shards the weights, else None.

    Raises:
        ConfigError: FSDP1 (only FSDP2 is supported).
    """
    settings = yaml.safe_load(accelerate_file.read_text()) or {}
    if settings.get("distributed_type") == "FSDP":
        if str((settings.get("fsdp_config") or {}).get("fsdp_version", 1)) != "2":
            raise ConfigError(f"{accelerate_file}: fsdp_config.fsdp_version must be 2 (FSDP1 is not supported)")
        return "FSDP2"
    if settings.get("distributed_type") != "DEEPSPEED":
        return None
    deepspeed = settings.get("deepspeed_config") or {}
    stage = deepspeed.get("zero_stage")
    json_file = deepspeed.get("deepspeed_config_file")
    for candidate in ([accelerate_file.parent / json_file, Path(json_file)] if json_file else []):
        if candidate.is_file():
            stage = json.loads(candidate.read_text()).get("zero_optimization", {}).get("stage", stage)
            break
    return "DeepSpeed ZeRO-3" if stage == 3 else None


def _resolve_data_paths(data: DataConfig, config_path: Path, overrides: list[str]) -> DataConfig:
    # Relative data paths are relative to the config file, so a run works from any directory.
    updates = {}
    for name in ("ift", "eft", "seed_prompts", "eval_prompts"):
        value = getattr(data, name)
        if value is not None:
            resolved = (config_path.parent / value).resolve()
            if not resolved.is_file():
                source = _sources(config_path, overrides, [("data", name)])
                what = "is not a file" if resolved.exists() else "file not found"
                raise ConfigError(f"{source}: data.{name}: {what}: {resolved}")
            updates[name] = str(resolved)
    return data.model_copy(update=updates)
