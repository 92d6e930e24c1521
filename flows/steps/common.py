"""What the steps share: loading a stage's model for reading or training, saving one, flushing curves."""

from pathlib import Path

import dpo
from flows.stepdir import MODEL_DIR, StepRecord, model_dir
from pipeline.config import RunConfig
from pipeline.models import InferenceModel, load_model_and_tokenizer


def inference_model(config: RunConfig, record: StepRecord) -> InferenceModel:
    """The model of `record` for the steps that only read it, loaded when one first needs it."""
    return InferenceModel(model_dir(record), device=config.model.device, dtype=config.model.dtype,
                          engine=config.engine, threads=config.runtime.torch_threads)


def trainable_model(config: RunConfig, record: StepRecord):
    return load_model_and_tokenizer(model_dir(record), device=config.model.device, dtype=config.model.dtype)


def save_model(model, tokenizer, out: Path) -> None:
    dpo.save_checkpoint(model, out / MODEL_DIR)
    tokenizer.save_pretrained(out / MODEL_DIR)


def flush_metrics(log_fn) -> None:
    # A buffered log_fn (pipeline.tracking.MetricBuffer) must store the training curves before the
    # step is published: a resumed step does not train again, so it could not send them later.
    if hasattr(log_fn, "flush"):
        log_fn.flush()


def scalars(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if isinstance(v, int | float | bool | str)}
