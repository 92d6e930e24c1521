"""What the steps share: loading a stage's model for reading or training, saving one, flushing curves,
and the model-level training switches (LoRA, gradient checkpointing, autocast) of SFT and DPO."""

from pathlib import Path

import dpo
from flows.stepdir import MODEL_DIR, StepRecord, launch_rank, model_dir
from pipeline.config import RunConfig
from pipeline.models import InferenceModel, load_model_and_tokenizer


def inference_model(config: RunConfig, record: StepRecord) -> InferenceModel:
    """The model of `record` for the steps that only read it, loaded when one first needs it."""
    return InferenceModel(model_dir(record), device=config.model.device, dtype=config.model.dtype,
                          engine=config.engine, threads=config.runtime.torch_threads)


ADAPTER_DIR = "adapter"  # a LoRA stage's adapters (peft format), beside the merged MODEL_DIR


def training_switches(config: RunConfig, out: Path) -> dict:
    """`train_sft` / `train_dpo` arguments from `model`: LoRA (adapters saved to `<out>/adapter`, then
    merged), gradient checkpointing, autocast, and `<out>/model` as where the trained model is saved
    (its weights gathered first when the ranks hold shards of them; `save_tokenizer` completes it)."""
    return {"lora": config.model.lora.to(dpo.LoraSettings), "compute": config.model.to(dpo.ComputeSettings),
            "adapter_dir": out / ADAPTER_DIR, "model_dir": out / MODEL_DIR}


def training_fingerprint(config: RunConfig) -> list:
    """What of `model` changes a training step's output, for its fingerprint. Nothing at the defaults, so
    steps of runs started before these switches existed keep their fingerprints; gradient
    checkpointing gives the same weights and is left out."""
    changed = {}
    if config.model.lora.enabled:
        changed["lora"] = config.model.lora.model_dump(mode="json")
    if config.model.autocast != "none":
        changed["autocast"] = config.model.autocast
    return [changed] if changed else []


def trainable_model(config: RunConfig, record: StepRecord):
    return load_model_and_tokenizer(model_dir(record), device=config.model.device, dtype=config.model.dtype)


def save_model(model, tokenizer, out: Path) -> None:
    """`<out>/model`: the weights of an untrained `model` and the tokenizer. Like `save_tokenizer`, only
    the main rank writes: under `accelerate launch` the other ranks' step folders are discarded."""
    if launch_rank() == 0:
        dpo.save_checkpoint(model, out / MODEL_DIR)
    save_tokenizer(tokenizer, out)


def save_tokenizer(tokenizer, out: Path) -> None:
    """The tokenizer beside the weights a trainer saved to `<out>/model`."""
    if launch_rank() == 0:
        tokenizer.save_pretrained(out / MODEL_DIR)


def named_curves(log_fn, trainer: str):
    """`log_fn` with every training metric named `<trainer>/<metric>` (`sft/loss`, `dpo/rewards/margins`):
    SFT's cross-entropy and DPO's loss are different quantities and never share a chart, and the curves
    sort before the stage's `summary/*` sections in MLflow's run page."""
    if log_fn is None:
        return None
    return lambda metrics, step: log_fn({f"{trainer}/{key}": value for key, value in metrics.items()}, step)


def flush_metrics(log_fn) -> None:
    # A buffered log_fn (pipeline.tracking.MetricBuffer) must store the training curves before the
    # step is published: a resumed step does not train again, so it could not send them later.
    if hasattr(log_fn, "flush"):
        log_fn.flush()


def scalars(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if isinstance(v, int | float | bool | str)}
