"""The run's first steps: seed data, the base model M0, and SFT on IFT + EFT data giving M1."""

from pathlib import Path

import dpo
from flows.stepdir import MODEL_DIR, StepRecord, fingerprint, run_step
from flows.steps.common import (
    named_curves,
    save_tokenizer,
    scalars,
    trainable_model,
    training_fingerprint,
    training_switches,
)
from pipeline import data as run_data
from pipeline.config import RunConfig
from pipeline.inputs import data_digests
from pipeline.models import load_model_and_tokenizer
from pipeline.tiny_model import build_tiny_model, build_tokenizer


def data_step(config: RunConfig, run_dir: Path) -> StepRecord:
    """Seed data of the run (IFT, EFT, prompt pool, eval prompts), copied or generated."""
    meta = (config.iteration.judge.template, config.iteration.meta_judge.template) if config.data.num_meta_judge else ()
    step_fp = fingerprint("data", config.data.model_dump(), config.seed, config.iteration.prompts.shots, *meta,
                          *data_digests(config.data))  # file contents too
    return run_step("data", run_dir / "data", step_fp, lambda tmp: run_data.write_run_data(config, tmp))


def base_model_step(config: RunConfig, run_dir: Path, data: StepRecord) -> StepRecord:
    """M0: the user's pretrained model, or a tiny Llama and a BPE tokenizer trained on the seed data."""
    if config.model.path is not None:
        path = Path(config.model.path)
        load_model_and_tokenizer(path, device="cpu", dtype="float32")  # fail fast on a bad directory
        stats = sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.is_file())
        return StepRecord(step="base", path=str(path.resolve()), fingerprint=fingerprint("base", stats))
    tiny = config.model.tiny

    def build(tmp: Path) -> dict:
        tokenizer = build_tokenizer(run_data.tokenizer_corpus(Path(data.path)), tmp / "tokenizer", vocab_size=tiny.vocab_size)
        build_tiny_model(tokenizer, tmp / MODEL_DIR, **tiny.model_dump(exclude={"vocab_size"}), seed=config.seed)
        return {"vocab_size": len(tokenizer)}

    return run_step("base", run_dir / "base", fingerprint("base", tiny.model_dump(), data.fingerprint, config.seed), build)


def sft_step(config: RunConfig, run_dir: Path, base: StepRecord, data: StepRecord, log_fn=None) -> StepRecord:
    """Supervised fine-tuning on IFT + EFT seed data gives M1."""

    def build(tmp: Path) -> dict:
        model, tokenizer = trainable_model(config, base)
        examples, dropped = run_data.sft_examples(Path(data.path), tokenizer, config.sft.max_len)
        summary = dpo.train_sft(model, examples, optim=config.sft.to(dpo.OptimSettings), max_len=config.sft.max_len,
                                seed=config.seed, log_fn=named_curves(log_fn, "sft"), **training_switches(config, tmp))
        save_tokenizer(tokenizer, tmp)
        return {**scalars(summary), "dropped_too_long": dropped}

    step_fp = fingerprint("sft", config.sft.model_dump(), base.fingerprint, data.fingerprint, config.seed,
                          *training_fingerprint(config))
    return run_step("sft", run_dir / "sft", step_fp, build)
