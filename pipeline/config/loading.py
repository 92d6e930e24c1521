"""Reading a run config: a YAML file (or the embedded default) plus `--set` overrides, validated."""

from pathlib import Path

import yaml
from pydantic import ValidationError

from pipeline.config.schema import (
    ConfigError,
    DataConfig,
    RunConfig,
    RuntimeConfig,
    deep_merge,
    format_errors,
)

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def parse_overrides(pairs: list[str]) -> dict:
    """Turn `--set a.b=c` strings into a nested mapping; values are parsed as YAML scalars."""
    result: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set iteration.dpo.beta=0.2")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {pair!r}: value is not valid YAML ({err})") from None
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(int(part) if part.isdigit() else part, {})
        node[parts[-1]] = value
    return result


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config ({err})") from None
    try:
        data = yaml.safe_load(text)  # safe loader: no Python-object tags
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
    raw = deep_merge(_read_yaml(path), parse_overrides(overrides or []))
    _resolve_relative_paths(raw, path.parent)
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{path}: invalid config\n" + format_errors(err)) from None
    except ValueError as err:  # raised by iteration_config() with its own field path
        raise ConfigError(f"{path}: invalid config\n{err}") from None
    return config.model_copy(update={"data": _resolve_data_paths(config.data, path),
                                     "runtime": _resolve_accelerate_config(config.runtime, path)})


def _resolve_relative_paths(raw: dict, base: Path) -> None:
    # A judge template or model directory named relative to the config file is found from any CWD.
    sections = [raw.get("iteration")] + list((raw.get("overrides") or {}).values() if isinstance(raw.get("overrides"), dict) else raw.get("overrides") or [])
    for section in sections:
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


def _resolve_data_paths(data: DataConfig, config_path: Path) -> DataConfig:
    # Relative data paths are relative to the config file, so a run works from any directory.
    updates = {}
    for name in ("ift", "eft", "seed_prompts", "eval_prompts"):
        value = getattr(data, name)
        if value is not None:
            resolved = (config_path.parent / value).resolve()
            if not resolved.is_file():
                raise ConfigError(f"{config_path}: data.{name}: file not found: {resolved}")
            updates[name] = str(resolved)
    return data.model_copy(update=updates)
