"""An iteration's training step: one DPO round from M_t on its pairs, with the reference reset to M_t."""

import dataclasses
import shutil
from pathlib import Path

import dpo
from flows.stepdir import (
    Salt,
    StepRecord,
    fingerprint,
    iter_dir,
    launch_rank,
    pause_point,
    run_step,
    step_seed,
)
from flows.steps.common import (
    flush_metrics,
    named_curves,
    save_model,
    save_tokenizer,
    scalars,
    trainable_model,
    training_fingerprint,
    training_switches,
)
from pipeline import data as run_data
from pipeline.config import RunConfig


def dpo_step(config: RunConfig, iteration: int, run_dir: Path, model: StepRecord, pairs: StepRecord | None,
             data: StepRecord, consistency: StepRecord | None = None, skip: str | None = None,
             log_fn=None) -> StepRecord:
    """DPO on this iteration's pairs: the policy starts at M_t and the reference is reset to M_t.

    Skill replay (`dpo.replay_batch_size`) trains the run's judge, self-instruct and meta-judge SFT
    examples with NLL beside the pairs, so the skills the loop relies on do not erode;
    a consistency record (CREAM) sets the round's label smoothing. With `skip` (or no pairs), M_t is
    published unchanged as M_{t+1}, the reason in the summary. With `dpo.checkpoint_every`, the
    round's state is saved in `<iter>/.dpo-state/<fingerprint>/` (beside the step's temp folder, so
    restarting the step keeps it) and a killed step resumes from it; the folder is deleted once the
    step has published its checkpoint.

    Raises:
        dpo.NonFiniteLossError: the loss became NaN/inf; nothing is published and M_t stays the
            latest model.
    """
    cfg, seed = config.iteration_config(iteration).dpo, step_seed(config.seed, iteration, Salt.DPO)
    out = iter_dir(run_dir, iteration)
    loss = cfg.to(dpo.LossSettings)
    if consistency is not None:
        loss = dataclasses.replace(loss, label_smoothing=consistency.summary["label_smoothing"])
    skip = skip or (None if pairs is not None and pairs.summary.get("pairs") else "no preference pairs")
    step_fp = fingerprint("dpo", cfg.model_dump(), model.fingerprint, skip or pairs.fingerprint, seed,
                          *([data.fingerprint] if cfg.replay_batch_size else []), loss.label_smoothing,
                          *training_fingerprint(config))
    state_root = out / ".dpo-state"

    curves = named_curves(log_fn, "dpo")

    def on_step(metrics: dict[str, float], step: int) -> None:
        if log_fn is not None:
            curves(metrics, step)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                flush_metrics(log_fn)  # the resumable state saved after this step must not outrun MLflow
        pause_point(f"{out.name}/dpo@{step}", out)

    def build(tmp: Path) -> dict:
        policy, tokenizer = trainable_model(config, model)
        if skip:
            save_model(policy, tokenizer, tmp)
            return {"skipped": skip, "steps": 0}
        if launch_rank() == 0:  # states of other inputs (and temp folders) are never resumed
            for stale in (p for p in state_root.glob("*") if p.name != step_fp):
                shutil.rmtree(stale, ignore_errors=True)
        replay = None
        if cfg.replay_batch_size:
            examples, _ = run_data.sft_examples(Path(data.path), tokenizer, config.sft.max_len, run_data.REPLAY_FILES)
            replay = dpo.SFTDataset.from_pairs(examples, max_len=config.sft.max_len)
        try:
            summary = dpo.train_dpo(
                policy, pairs.path, loss=loss, optim=cfg.to(dpo.OptimSettings),
                early_stopping=cfg.early_stopping.to(dpo.EarlyStopping), valid_fraction=cfg.early_stopping.valid_fraction,
                replay=replay, replay_batch_size=cfg.replay_batch_size, precompute_ref_logps=cfg.precompute_ref_logps,
                vocab_size=len(tokenizer), checkpoint_every=cfg.checkpoint_every, state_dir=state_root / step_fp,
                seed=seed, log_fn=on_step, **training_switches(config, tmp))
        except dpo.NonFiniteLossError as err:
            raise dpo.NonFiniteLossError(
                f"{out.name} DPO: {err}. The run stops here: nothing is published for this step and M_{iteration} "
                f"stays the latest model; lower iteration.dpo.start_learning_rate (or beta) and start a new run"
            ) from err
        flush_metrics(log_fn)
        save_tokenizer(tokenizer, tmp)
        return {**scalars(summary), "label_smoothing": loss.label_smoothing}

    record = run_step("dpo", out / "checkpoint", step_fp, build)
    if launch_rank() == 0:
        shutil.rmtree(state_root, ignore_errors=True)  # the published checkpoint supersedes it
    return record
