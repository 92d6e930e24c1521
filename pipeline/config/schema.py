"""The run configuration schema: one YAML file describes a whole self-rewarding run.

Sections follow the loop's steps: `model`, `data`, `sft`, then `iteration` (the settings every
iteration uses) and `overrides` (per-iteration changes, as a list or a mapping by iteration number),
plus `eval`, `runtime`, `tracking`, `promotion` and `engine`. Defaults live here, once; a YAML file holds only
what it changes. Field names equal the argument names of the ML packages' settings objects, so a
section becomes one with `section.to(SettingsClass)`.

This module imports no torch or mlflow, so a bad config fails in well under a second.
"""

import copy
import dataclasses
import hashlib
import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to(self, settings: type[T], **extra: Any) -> T:
        """The settings dataclass `settings` built from this section's fields of the same names
        (plus `extra`); its other fields keep their defaults."""
        names = ({f.name for f in dataclasses.fields(settings)} & type(self).model_fields.keys()) - extra.keys()
        return settings(**{name: getattr(self, name) for name in names}, **extra)


class TinyModelConfig(_Section):
    """A Llama-architecture model built from scratch (the demo and the tests)."""

    hidden_size: int = Field(64, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(128, ge=8)
    max_position_embeddings: int = Field(256, ge=16)
    # Byte-level BPE needs its 256 byte symbols, the 5 special tokens and at least one merge.
    vocab_size: int = Field(384, ge=262, description="BPE vocabulary trained on the task's corpus")

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> "TinyModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        return self


class LoraConfig(_Section):
    """LoRA adapters (peft) trained instead of every weight, in SFT and DPO. The DPO reference is the
    model with its adapters disabled (no second copy of the weights); each stage adds new adapters to
    the merged previous model, so the reference stays exactly M_t (see `dpo/lora.py`)."""

    enabled: bool = Field(False, description="train LoRA adapters instead of every weight (SFT and DPO); needs iteration.dpo.ref_ema_decay=1")
    r: int = Field(8, ge=1, description="adapter rank")
    alpha: float = Field(16.0, gt=0, description="an adapter adds (alpha / r) * B A x")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' (every linear layer but the output head) or module names, e.g. [q_proj, v_proj]")


class ModelConfig(_Section):
    """`path` is a local `from_pretrained` directory; without it, a tiny model is built from `tiny`."""

    path: str | None = Field(None, description="local `from_pretrained` directory (Llama, Qwen, Mistral...)")
    tiny: TinyModelConfig = TinyModelConfig()
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="auto: bf16 on a GPU that has it, else fp32")
    lora: LoraConfig = LoraConfig()
    gradient_checkpointing: bool = Field(False, description="SFT/DPO recompute activations in the backward pass: less memory, ~1 more forward per step")
    autocast: Literal["none", "bf16"] = Field("none", description="bf16: SFT/DPO forward passes under bf16 autocast; weights and optimizer state keep model.dtype")


class DataConfig(_Section):
    """Seed data. `task: demo_rules` generates everything from the built-in synthetic task."""

    task: Literal["demo_rules"] | None = Field("demo_rules", description="built-in synthetic task that generates the seed data")
    ift: str | None = Field(None, description="JSONL of {prompt, response}: instruction fine-tuning")
    eft: str | None = Field(None, description="JSONL of {prompt, response}: judge fine-tuning")
    seed_prompts: str | None = Field(None, description="prompt pool for self-instruct, or the prompt source")
    eval_prompts: str | None = Field(None, description="held-out prompts for evaluation")
    num_ift: int = Field(600, ge=1)
    num_eft: int = Field(600, ge=1)
    num_seed_prompts: int = Field(200, ge=1)
    num_eval: int = Field(100, ge=1)
    judge_holdout: int = Field(
        100, ge=0, description="EFT examples held out of training to measure every stage's judge (at most half)"
    )
    num_self_instruct: int = Field(
        200, ge=0, description="SFT examples teaching the self-instruct format, built from the IFT prompts"
    )
    num_meta_judge: int = Field(
        0, ge=0, description="SFT examples teaching meta-judging (which of two judgments is right), built from EFT"
    )

    @model_validator(mode="after")
    def _files_or_task(self) -> "DataConfig":
        if self.task is None and not (self.ift and self.seed_prompts):
            raise ValueError("without a built-in `task`, give at least `ift` and `seed_prompts` files")
        return self


class OptimConfig(_Section):
    """Shared by SFT and DPO: AdamW, linear warm-up then linear decay from start to end LR."""

    start_learning_rate: float = Field(1e-3, gt=0, description="learning rate after warm-up")
    end_learning_rate: float = Field(1e-4, ge=0, description="learning rate at the last step (linear decay)")
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping")
    batch_size: int = Field(16, ge=1, description="examples (pairs for DPO) per micro-batch")
    grad_accum_steps: int = Field(1, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    num_train_steps: int | None = Field(None, ge=1, description="optimizer steps; wins over num_epochs")
    num_epochs: int | None = Field(None, ge=1, description="passes over the data (1 when neither is set)")
    max_len: int = Field(128, ge=8, description="tokens per training sequence (prompt + response)")


class SFTConfig(OptimConfig):
    enabled: bool = Field(True, description="SFT on IFT + EFT before iteration 1 (M0 -> M1)")


class SamplingConfig(_Section):
    max_new_tokens: int = Field(64, ge=1, description="NEW tokens only")
    temperature: float = Field(0.7, ge=0, description="0 = greedy")
    top_p: float = Field(0.9, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = off")
    batch_size: int = Field(64, ge=1, description="sequences decoded together")


class PromptsConfig(_Section):
    """Where an iteration's prompts come from: self-instruct from the seed pool, or the pool itself."""

    source: Literal["self_instruct", "seed"] = Field("self_instruct", description="self_instruct: M_t writes prompts few-shot; seed: sample the pool")
    num_prompts: int = Field(64, ge=1, description="prompts per iteration")
    shots: int = Field(4, ge=1, description="pool examples shown per self-instruct prompt")
    max_rouge_l: float = Field(0.7, ge=0, le=1, description="near-duplicate filter against the pool and each other")
    min_chars: int = Field(8, ge=1)
    max_chars: int = Field(400, ge=1)
    sampling: SamplingConfig = SamplingConfig(temperature=0.8, max_new_tokens=48)


class CandidatesConfig(_Section):
    num: int = Field(4, ge=2, description="N candidate responses per prompt")
    anchor_samples: int = Field(
        0, ge=0, description="responses per prompt also sampled from M1, the rejected side of pairs (anchored rejection; 0: off)"
    )
    sampling: SamplingConfig = SamplingConfig()


class JudgeGateConfig(_Section):
    """Held-out judge health a judge must show to be used (None: not checked)."""

    max_parse_failure_rate: float | None = Field(None, ge=0, le=1, description="most unparsable held-out judgments")
    min_pairwise_accuracy: float | None = Field(None, ge=0, le=1, description="least held-out pairwise-order accuracy")


class JudgeConfig(_Section):
    template: str = Field("default", description="'default', or a YAML judge template path")
    num_judgments: int = Field(3, ge=1, description="K judgments per candidate, averaged")
    reward_fn: str | None = Field(None, description="'module:function' external reward instead of self-judging")
    judge_model: Literal["current", "initial", "best"] = Field(
        "current", description="who judges iteration t: M_t (the paper), M1, or the stage with the best held-out judge"
    )
    gate: JudgeGateConfig = JudgeGateConfig()
    sampling: SamplingConfig = SamplingConfig(temperature=0.7, max_new_tokens=64)


class PairsConfig(_Section):
    strategy: Literal["max_min", "length_control", "random"] = Field("max_min", description="max_min: best vs worst (the paper); length_control: Meta-Rewarding tiers; random: control, judge order ignored")
    rho: float = Field(0.0, ge=0, le=1, description="tier width for length_control")


class EarlyStoppingConfig(_Section):
    """Validation during a DPO round on held-out pairs; the best weights are restored at the end."""

    valid_fraction: float = Field(0.0, ge=0, lt=1, description="share of the pairs held out for validation (DPO loss)")
    eval_every: int | None = Field(None, ge=1, description="validate every N optimizer steps and at the last (None: off)")
    patience: int | None = Field(None, ge=1, description="validations without improvement before stopping (None: never stop)")

    @model_validator(mode="after")
    def _needs_held_out_pairs(self) -> "EarlyStoppingConfig":
        if self.eval_every is not None and self.valid_fraction == 0:
            raise ValueError("eval_every needs held-out pairs: set valid_fraction > 0")
        return self


class DPOConfig(OptimConfig):
    beta: float = Field(0.1, gt=0, description="strength of the KL anchor to the reference M_t")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cDPO / robust label noise")
    nll_weight: float = Field(0.0, ge=0, description="weight of an NLL term on chosen responses (RPO)")
    reduction: Literal["sum", "mean"] = Field("sum", description="log-probs summed (DPO paper) or averaged over tokens")
    ref_ema_decay: float = Field(
        1.0, ge=0, le=1, description="1: the reference stays M_t (the paper); < 1: an EMA of the policy, every step"
    )
    replay_batch_size: int = Field(
        0, ge=0, description="judge (EFT), self-instruct and meta-judge SFT examples per micro-batch trained with NLL inside DPO, so those skills keep their format (replay; 0: off)"
    )
    replay_weight: float = Field(1.0, ge=0, description="weight of the replay NLL term")
    precompute_ref_logps: bool = Field(True, description="reference log-probs once per round instead of every step")
    share_prompt: bool = Field(True, description="score chosen and rejected in one row holding the prompt once (checked model families, batches where it is cheaper)")
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    checkpoint_every: int | None = Field(
        None, ge=1, description="save the training state every N steps so a killed DPO step resumes mid-round (None: off)"
    )
    start_learning_rate: float = Field(1e-4, gt=0)
    end_learning_rate: float = Field(1e-5, ge=0)


class ConsistencyConfig(_Section):
    """CREAM: the previous stage's judge re-ranks the candidates; disagreement softens the labels."""

    enabled: bool = Field(False, description="label smoothing of the round = 1 - consistency with M_{t-1}'s ranking (CREAM)")
    max_prompts: int = Field(128, ge=1, description="prompts whose candidates M_{t-1} re-judges")


class MetaJudgeConfig(_Section):
    """Meta-Rewarding: the model compares its own judgments; best vs worst become judge pairs."""

    enabled: bool = Field(False, description="train the judge with pairs of its own judgments (Meta-Rewarding)")
    template: str = Field("default", description="'default', or a YAML meta-judge template path")
    max_candidates: int = Field(64, ge=1, description="candidates whose judgments are compared")
    max_share: float = Field(0.15, gt=0, lt=1, description="most judge pairs as a share of all pairs of the round")
    max_len: int = Field(256, ge=8, description="tokens per judge pair row (judge prompt + judgment)")
    sampling: SamplingConfig = SamplingConfig(temperature=0.7, max_new_tokens=8)


class IterationConfig(_Section):
    prompts: PromptsConfig = PromptsConfig()
    candidates: CandidatesConfig = CandidatesConfig()
    judge: JudgeConfig = JudgeConfig()
    meta_judge: MetaJudgeConfig = MetaJudgeConfig()
    consistency: ConsistencyConfig = ConsistencyConfig()
    pairs: PairsConfig = PairsConfig()
    dpo: DPOConfig = DPOConfig()
    on_degenerate: Literal["stop", "skip", "fallback"] = Field(
        "stop", description="no prompts, no pairs or a judge failing its gate: stop the run, skip the iteration, or fall back (pool prompts, last healthy judge)"
    )


class EvalConfig(_Section):
    enabled: bool = Field(True, description="evaluate every stage's model on held-out prompts")
    max_new_tokens: int = Field(32, ge=1)
    num_judge_pairs: int = Field(100, ge=0, description="pairs for the judge's pairwise accuracy")


class RuntimeConfig(_Section):
    """Where heavy steps run: in the flow process, or as `accelerate launch` subprocesses."""

    launcher: Literal["inprocess", "accelerate"] = "inprocess"
    num_processes: int = Field(1, ge=1)
    parallel_generation: bool = Field(
        False, description="prompts, candidates, judging and evaluation split each batch of prompts by bucket, one seed per bucket (the same output on any number of processes); with launcher: accelerate, over num_processes launched ranks"
    )
    retries: int = Field(1, ge=0, description="Prefect retries per step")
    retry_delay_seconds: float = Field(2.0, ge=0)
    torch_threads: int | None = Field(
        None, ge=1, description="torch CPU threads per process; default: torch's choice (one per core)"
    )
    accelerate_config: str | None = Field(None, description="accelerate config file for the training launches (FSDP, DeepSpeed: configs/accelerate/); runtime.* launch settings win over its own")
    num_machines: int = Field(1, ge=1, description="machines of a training launch; num_processes counts the processes of all of them")
    machine_rank: int = Field(0, ge=0, description="machine rank of a launch: always 0 in a run config (the flow runs on machine 0); `selfreward join --machine-rank K` sets it on the others")
    main_process_ip: str | None = Field(None, description="address of machine 0 (needed with num_machines > 1); one machine: 127.0.0.1")
    main_process_port: int | None = Field(None, ge=1, le=65535, description="port on machine 0; default: a free port (one machine), 29500 (several)")

    @model_validator(mode="after")
    def _launch_settings_fit(self) -> "RuntimeConfig":
        launch_only = [name for name, default in (("accelerate_config", None), ("num_machines", 1)) if getattr(self, name) != default]
        if launch_only and self.launcher != "accelerate":
            raise ValueError(f"{', '.join(launch_only)}: used by training launches only, set launcher: accelerate")
        if self.machine_rank >= self.num_machines:
            raise ValueError(f"machine_rank ({self.machine_rank}) must be below num_machines ({self.num_machines})")
        if self.num_machines > 1 and not self.main_process_ip:
            raise ValueError("num_machines > 1 needs main_process_ip, the address machine 0 is reached at")
        if self.num_processes % self.num_machines:
            raise ValueError(f"num_processes ({self.num_processes}) counts all machines: it must be a multiple of "
                             f"num_machines ({self.num_machines})")
        return self


class TrackingConfig(_Section):
    # MLflow stores both names in 256-character columns; an empty experiment name is no experiment.
    experiment: str = Field("selfreward", min_length=1, max_length=256, description="MLflow experiment")
    registered_model: str | None = Field(None, min_length=1, max_length=256, description="model registry name; default '<run_name>-policy'")
    log_checkpoints: bool = Field(True, description="copy each checkpoint into MLflow and register it")
    retries: int = Field(5, ge=0, description="retries of an MLflow call that failed to connect, with back-off")
    retry_backoff_seconds: float = Field(2.0, ge=0, description="first back-off; doubles per retry, at most 30 s")
    metrics_flush_seconds: float = Field(
        10.0, ge=0, description="training curves reach MLflow in batches at most this often (0: every step)"
    )


# Stage metrics a challenger can be judged on (the parent run's per-stage summary); the `gt_*` ones
# exist only where a task has ground truth (`data.task: demo_rules`).
PROMOTION_METRICS = ("gt_score", "gt_success", "gt_score_sampled", "judge_pairwise_accuracy", "self_judge_score",
                     "judge_accuracy")


class PromotionConfig(_Section):
    """Champion and challenger: which stage's model holds the registry alias `champion`, and which
    model the next iteration starts from (`pipeline/promotion.py`)."""

    enabled: bool = Field(True, description="move the `champion` alias to a stage's model only when it beats the champion")
    metric: Literal[PROMOTION_METRICS] = Field("gt_score", description="stage metric compared (higher is better)")  # type: ignore[valid-type]
    margin: float = Field(0.0, ge=0, description="a challenger must beat the champion's metric by more than this")
    max_judge_parse_failures: float | None = Field(
        0.25, ge=0, le=1, description="veto: the challenger's judge fails to parse more than this share of held-out judgments (null: off)")
    max_judge_accuracy_drop: float | None = Field(
        0.1, ge=0, le=1, description="veto: the challenger's judge accuracy is more than this below the champion's (null: off)")
    start_from: Literal["latest", "champion"] = Field(
        "latest", description="model each iteration starts from: the latest stage's, or the champion")


class EngineConfig(_Section):
    """What samples, judges and evaluates: our own decoding loop, or vLLM in its own virtualenv.

    On 2 CPU cores the native loop wins a demo iteration (benchmarks/bench_engines.py: vLLM's
    ~15 s start per model outweighs its faster judging); vLLM's CPU attention also needs a head
    size of 32, 64, 80, ... (the demo's tiny model has 16).
    """

    name: Literal["native", "vllm"] = Field("native", description="native: our batched KV-cached loop; vllm: vLLM in `python`'s virtualenv (`make vllm-env`)")
    python: str = Field(".venv-vllm/bin/python", description="vllm: the vLLM virtualenv's python; relative to the project directory")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs one model is split over")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vllm on GPU: share of GPU memory it may take")
    cpu_kv_cache_gib: float = Field(1.0, gt=0, description="vllm on CPU: KV-cache size (GiB)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="vllm: auto = model.dtype (float32 on CPU)")


class RunConfig(_Section):
    run_name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100, description="folder and MLflow name; same name + config resumes")
    seed: int = Field(0, description="seeds every step (data, init, sampling, training order)")
    # Bounded so that a typo (1000000000) is refused at once instead of stalling validation for minutes.
    iterations: int = Field(2, ge=1, le=1000, description="self-rewarding iterations after SFT (M2, M3, ...)")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    sft: SFTConfig = SFTConfig()
    iteration: IterationConfig = IterationConfig()
    overrides: dict[int, dict[str, Any]] = Field(
        default_factory=dict, description="per-iteration changes to `iteration`, keyed by iteration (1-based)"
    )
    eval: EvalConfig = EvalConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    tracking: TrackingConfig = TrackingConfig()
    promotion: PromotionConfig = PromotionConfig()
    engine: EngineConfig = EngineConfig()

    @model_validator(mode="before")
    @classmethod
    def _overrides_list_to_mapping(cls, data: Any) -> Any:
        # `overrides: [{...}, {...}]` is the list form: entry k applies to iteration k+1.
        if isinstance(data, dict) and isinstance(data.get("overrides"), list):
            data = {**data, "overrides": {i + 1: o or {} for i, o in enumerate(data["overrides"])}}
        return data

    @model_validator(mode="after")
    def _check_overrides(self) -> "RunConfig":
        for it in self.overrides:
            if not 1 <= it <= self.iterations:
                raise ValueError(f"overrides has iteration {it}, but iterations is {self.iterations}")
        for it in self.overrides:
            self.iteration_config(it)  # validates every merged iteration now, not mid-run
        return self

    @model_validator(mode="after")
    def _parallel_generation_is_native(self) -> "RunConfig":
        if self.runtime.parallel_generation and self.engine.name != "native":
            raise ValueError("runtime.parallel_generation splits the native engine's batches over processes; "
                             "vLLM spreads one model over GPUs with engine.tensor_parallel_size instead")
        return self

    @model_validator(mode="after")
    def _champion_can_change(self) -> "RunConfig":
        # An unmeasured metric only tags "not measured"; but building every iteration on a champion
        # that can never change would silently restart each one from M1.
        metric, where = self.promotion.metric, "promotion.start_from 'champion'"
        if self.promotion.start_from == "champion":
            if not self.promotion.enabled:
                raise ValueError(f"{where} needs promotion.enabled")
            if metric != "judge_accuracy" and not self.eval.enabled:
                raise ValueError(f"{where} needs eval.enabled to measure promotion.metric {metric!r} "
                                 "(or promotion.metric judge_accuracy, measured by judge health)")
            if metric.startswith("gt_") and self.data.task is None:
                raise ValueError(f"{where}: promotion.metric {metric!r} needs ground truth (data.task: demo_rules); "
                                 "use self_judge_score")
        return self

    @model_validator(mode="after")
    def _lora_needs_a_frozen_reference(self) -> "RunConfig":
        if self.model.lora.enabled:
            for it in range(1, self.iterations + 1):
                if self.iteration_config(it).dpo.ref_ema_decay != 1:
                    field = "iteration" if self.iteration.dpo.ref_ema_decay != 1 else f"overrides.{it}"
                    raise ValueError(f"{field}.dpo.ref_ema_decay must be 1 with model.lora.enabled: a LoRA policy's "
                                     "reference is its base weights with the adapters disabled, which cannot follow an EMA")
        return self

    def iteration_config(self, iteration: int) -> IterationConfig:
        """The settings of one iteration: `iteration` with that iteration's overrides merged in."""
        override = self.overrides.get(iteration)
        if not override:
            return self.iteration
        merged = deep_merge(self.iteration.model_dump(), override)
        try:
            return IterationConfig.model_validate(merged)
        except ValidationError as err:
            raise ValueError(format_errors(err, prefix=f"overrides.{iteration}")) from None

    def fingerprint(self, *sections: str) -> str:
        """A short stable hash of the named sections (all when none), for resume keys."""
        dumped = self.model_dump(mode="json")
        picked = {k: dumped[k] for k in sections} if sections else dumped
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


_ECHO_CHARS = 120  # of a bad value or key echoed in a message: enough to recognise, never megabytes


def _clip(text: str) -> str:
    return text if len(text) <= _ECHO_CHARS else f"{text[:_ECHO_CHARS]}... ({len(text):,} characters)"


def format_errors(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        path = ".".join(_clip(str(p)) for p in ((prefix,) if prefix else ()) + tuple(e["loc"]))
        got = "" if e["type"] == "missing" else f" (got {_clip(repr(e['input']))})"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{path}: {msg}{got}" if path else msg)
    return "\n".join(lines)
