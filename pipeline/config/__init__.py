"""The run configuration: the schema (`schema`), reading YAML with `--set` overrides (`loading`), and
the README's generated reference (`reference`). Imports no torch or mlflow."""

from pipeline.config.loading import DEFAULT_CONFIG, load_config, parse_overrides
from pipeline.config.reference import README_MARKERS, config_reference, update_readme
from pipeline.config.schema import (
    CandidatesConfig,
    ConfigError,
    DataConfig,
    DPOConfig,
    EarlyStoppingConfig,
    EngineConfig,
    EvalConfig,
    IterationConfig,
    JudgeConfig,
    ModelConfig,
    OptimConfig,
    PairsConfig,
    PromptsConfig,
    RunConfig,
    RuntimeConfig,
    SamplingConfig,
    SFTConfig,
    TinyModelConfig,
    TrackingConfig,
)

__all__ = [
    "DEFAULT_CONFIG",
    "README_MARKERS",
    "CandidatesConfig",
    "ConfigError",
    "DPOConfig",
    "DataConfig",
    "EarlyStoppingConfig",
    "EngineConfig",
    "EvalConfig",
    "IterationConfig",
    "JudgeConfig",
    "ModelConfig",
    "OptimConfig",
    "PairsConfig",
    "PromptsConfig",
    "RunConfig",
    "RuntimeConfig",
    "SFTConfig",
    "SamplingConfig",
    "TinyModelConfig",
    "TrackingConfig",
    "config_reference",
    "load_config",
    "parse_overrides",
    "update_readme",
]
