"""What every stage does once its model is trained: evaluate it, then record the stage.

Stage `sft` (index 0) gives M1, stage `iter-t` gives M_{t+1}. Its outcome is tagged on its MLflow
run as `selfreward.outcome`:

- `completed`: the stage's model was trained on this stage's data.
- `skipped: ...`: no preference pair survived (every prompt tied, or the judge never produced a
  parsable score); M_{t+1} = M_t and the run goes on with the next iteration.
- `failed: ...`: the stage raised (a non-finite DPO loss, a full disk, bad input, MLflow gone); the
  stage run is marked FAILED and the run stops. Re-running the same command resumes it.
"""

import math
import os
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from flows.champion import record_promotion
from flows.stepdir import StepRecord, model_dir
from flows.steps import inference_model
from flows.tasks import StepTasks
from generation import render_chat_prompt
from pipeline.config import RunConfig
from pipeline.models import InferenceModel, load_model_and_tokenizer
from pipeline.report import (
    CURVES,
    artifact_key,
    plot_learning_curves,
    plot_score_histogram,
    stage_name,
    stage_summary_markdown,
    version_description,
)
from pipeline.tracking import TAG_OUTCOME, ModelRegistry, Tracker, registered_model_name


def finish_stage(tasks: StepTasks, tracker: Tracker, config: RunConfig, run_dir: Path, parent_run_id: str,
                 run_id: str, index: int, model: StepRecord, data: StepRecord, **step_records: StepRecord) -> None:
    """Evaluate the stage's model, then log the stage to MLflow and summarise it in Prefect."""
    stage = stage_name(index)
    outcome = stage_outcome(index, model, step_records.get("judgments"))
    if outcome != "completed":
        get_run_logger().warning("%s: %s", stage, outcome)
    loaded = inference_model(config, model)  # read by both steps and the model registry, loaded once
    evaluation = tasks.evaluate(config, stage, run_dir, model, data, loaded) if config.eval.enabled else None
    health = tasks.judge_health(config, stage, run_dir, model, data, loaded)
    metrics = record_stage(tracker, config, run_dir, parent_run_id, run_id, index, model, evaluation, outcome,
                           loaded=loaded, judge_health=health, **step_records)
    loaded.release()
    record_promotion(tracker, config, parent_run_id, run_id, index)
    create_markdown_artifact(stage_summary_markdown(config.run_name, stage, metrics, tracker.run_url(run_id)),
                             key=artifact_key(config.run_name, stage), description=f"{config.run_name} {stage} summary")
    if tracker.tracking_uri.startswith("http"):
        create_link_artifact(tracker.run_url(run_id), link_text=f"MLflow run of {stage}")


def record_stage(tracker: Tracker, config: RunConfig, run_dir: Path, parent_run_id: str, run_id: str, index: int,
                 model: StepRecord, evaluation: StepRecord | None, outcome: str, loaded: InferenceModel | None = None,
                 **step_records: StepRecord) -> dict[str, float]:
    """Log a finished stage to MLflow: step summaries on the child, per-stage summary on the parent
    (step = the stage index), plots, pairs, and the checkpoint as a registered model version."""
    stage = stage_name(index)
    # One point per step summary, all under `summary/` so MLflow shows the training curves above them.
    child = {key: value for name, record in step_records.items() for key, value in _flat(f"summary/{name}", record.summary)}
    eval_metrics = {k: v for k, v in (evaluation.summary if evaluation else {}).items() if isinstance(v, int | float)}
    tracker.log_metrics(run_id, {**child, **{f"summary/eval/{k}": v for k, v in eval_metrics.items()}}, step=index)
    summary = parent_summary(step_records, model, eval_metrics)
    tracker.log_metrics(parent_run_id, summary, step=index)

    plots = run_dir / stage / "plots"
    judge = step_records["judgments"].summary if "judgments" in step_records else {}
    for png in (
        plot_learning_curves({key: tracker.metric_history(run_id, key) for key in CURVES}, plots / "learning_curves.png", stage),
        plot_score_histogram(judge.get("score_histogram", {}), plots / "judge_scores.png", f"{stage}: judge scores",
                             unparsed=int(judge.get("parse_failures", 0))),
    ):
        if png is not None:
            tracker.log_artifact(run_id, png, "plots")
    if "pairs" in step_records:
        tracker.log_artifact(run_id, Path(step_records["pairs"].path) / "pairs.jsonl", "pairs")
    # Relative to the output folder, like every path MLflow keeps of a run: the folder may move.
    tags = {"selfreward.checkpoint": os.path.relpath(model_dir(model), run_dir.parent), TAG_OUTCOME: outcome}
    if config.tracking.log_checkpoints:
        tags["selfreward.model_version"] = register_model(tracker, config, run_dir, run_id, stage, model, loaded,
                                                          summary, outcome)
    tracker.set_tags(run_id, tags)
    tracker.finish(run_id)
    return summary


def register_model(tracker: Tracker, config: RunConfig, run_dir: Path, run_id: str, stage: str, model: StepRecord,
                   loaded: InferenceModel | None, summary: dict[str, float], outcome: str) -> str:
    """Log the stage's model as an MLflow transformers model, register it as a version of the run's
    registered model with the stage's metrics as its description, and point the stage's alias at it."""
    registry = ModelRegistry(tracker, registered_model_name(config.run_name, config.tracking.registered_model))

    def load():
        if loaded is not None and config.engine.name == "native":
            return loaded.get()  # the model the evaluation just read
        return load_model_and_tokenizer(model_dir(model), device="cpu", dtype=config.model.dtype)

    version = registry.register(
        run_id, load, render=render_chat_prompt, max_new_tokens=config.iteration.candidates.sampling.max_new_tokens,
        source_name=os.path.relpath(model_dir(model), run_dir.parent),
        description=version_description(config.run_name, stage, summary, outcome),
        tags={"selfreward.run_name": config.run_name, "selfreward.stage": stage, TAG_OUTCOME: outcome})
    registry.set_alias(stage, version)
    return version


def _flat(prefix: str, summary: dict):
    """(`prefix/key`, number) for every number of a step summary, one level of nesting included
    (e.g. `prompts/rejected/duplicate`)."""
    for key, value in summary.items():
        if isinstance(value, dict):
            yield from _flat(f"{prefix}/{key}", value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield f"{prefix}/{key}", value


def stage_outcome(index: int, model: StepRecord, judgments: StepRecord | None) -> str:
    """`completed`, or `skipped: <why>` when the stage's model is its input unchanged."""
    skipped = model.summary.get("skipped")
    if not skipped:
        return "completed"
    judge = judgments.summary if judgments is not None else {}
    if judge.get("candidates") and judge.get("unscored_candidates") == judge.get("candidates"):
        why = (f"the judge produced no parsable score ({judge.get('parse_failures', 0)} of "
               f"{judge.get('judgments', 0)} judgments unparsable), so {skipped}")
    else:
        why = str(skipped)
    return f"skipped: {why}; M{index + 1} = M{index}"


def parent_summary(records: dict[str, StepRecord], model: StepRecord, eval_metrics: dict[str, float]) -> dict[str, float]:
    """The per-stage metrics of the parent run (one point per stage): prompts, diversity, judge use
    and health, pairs, DPO, evaluation. A rate of 0 of 0 is NaN (shown as n/a), never 0."""

    iteration = "prompts" in records  # SFT has none of the loop's rates; a skipped iteration has them n/a

    def get(step: str, key: str, rate: bool = False, loop: bool = False):
        value = records[step].summary.get(key) if step in records else None
        return math.nan if rate and value is None and (step in records or (loop and iteration)) else value

    summary = {
        "num_prompts": get("prompts", "prompts"),
        "valid_task_share": get("prompts", "valid_task_share"),
        "diversity": get("candidates", "distinct_share", rate=True, loop=True),
        "num_pairs": get("pairs", "pairs"),
        "anchored_pairs": get("pairs", "anchored_pairs"),
        "judge_pairs": get("pairs", "judge_pairs"),
        "skip_rate": get("pairs", "skip_rate", rate=True, loop=True),
        "parse_failure_rate": get("judgments", "parse_failure_rate", rate=True, loop=True),
        "consistency_rate": get("consistency", "consistency_rate", rate=True),
        "mean_chosen_score": get("pairs", "mean_chosen_score"),
        "mean_rejected_score": get("pairs", "mean_rejected_score"),
        "mean_chosen_length": get("pairs", "mean_chosen_length"),
        "mean_rejected_length": get("pairs", "mean_rejected_length"),
        "dpo_reward_accuracy": model.summary.get("final/rewards/accuracies"),
        # Cross-entropy and DPO loss are different quantities: one metric each, never one line.
        "dpo_loss" if iteration else "sft_loss": model.summary.get("final/loss"),
        "judge_accuracy": get("judge_health", "pairwise_accuracy", rate=True),
        "judge_exact_agreement": get("judge_health", "exact_agreement", rate=True),
        "judge_verdict_agreement": get("judge_health", "verdict_agreement", rate=True),
        "judge_parse_failures": get("judge_health", "parse_failure_rate", rate=True),
        **eval_metrics,
    }
    return {k: float(v) for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}
