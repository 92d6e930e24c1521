"""One self-rewarding iteration as a Prefect subflow: M_t -> M_{t+1}, a task per step.

Outcomes, recorded on the stage's MLflow run as tag `selfreward.outcome`:

- `completed`: M_{t+1} was trained on this iteration's pairs.
- `skipped: ...`: no preference pair survived (every prompt tied, or the judge never produced a
  parsable score); M_{t+1} = M_t and the run goes on with the next iteration.
- `failed: ...`: the iteration raised (a non-finite DPO loss, a full disk, bad input, MLflow gone);
  the stage run is marked FAILED and the run stops. Re-running the same command resumes it.
"""

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from dpo import NonFiniteLossError
from flows import steps
from flows.launch import run_training
from flows.stepdir import DiskFullError, StepRecord
from pipeline.config import RunConfig
from pipeline.report import (
    CURVES,
    artifact_key,
    plot_learning_curves,
    plot_score_histogram,
    stage_summary_markdown,
)
from pipeline.tracking import TAG_OUTCOME, Tracker, TrackingUnavailableError

# Errors a retry cannot fix: bad input (ValueError subclasses), a diverged loss, a full disk, and an
# MLflow outage (the Tracker already retried it with back-off).
_NOT_RETRIED = (ValueError, NonFiniteLossError, DiskFullError, TrackingUnavailableError)


def worth_retrying(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry a failed step unless its error is deterministic."""
    return not isinstance(state.data, _NOT_RETRIED)


def _task(fn, name: str, run_name: str):
    # Resume is decided by the step folders (flows/stepdir.py), so Prefect's own result cache is off:
    # a wiped Prefect home or a deployment with another home resumes the same way.
    return task(fn, name=name, task_run_name=run_name, cache_policy=NONE, retries=1, retry_delay_seconds=2,
                retry_condition_fn=worth_retrying)


generate_prompts = _task(steps.generate_prompts, "generate-prompts", "prompts-{iteration}")
sample_candidates = _task(steps.sample_candidates, "sample-candidates", "candidates-{iteration}")
judge_candidates = _task(steps.judge_candidates, "judge-candidates", "judge-{iteration}")
build_pairs = _task(steps.build_pairs, "build-pairs", "pairs-{iteration}")
train_dpo = _task(run_training, "train-dpo", "dpo-{iteration}")
evaluate = _task(steps.evaluate, "evaluate", "evaluate-{stage}")


def with_retries(t, config: RunConfig):
    return t.with_options(retries=config.runtime.retries, retry_delay_seconds=config.runtime.retry_delay_seconds,
                          retry_condition_fn=worth_retrying)


@flow(name="selfreward-iteration", flow_run_name="iter-{iteration}", log_prints=True)
def iteration_flow(
    config: RunConfig, iteration: int, run_dir: str, model: StepRecord, data: StepRecord, parent_run_id: str, tracking_uri: str
) -> StepRecord:
    """Generate prompts, sample, self-judge, build pairs, DPO with the reference reset to M_t, evaluate."""
    logger = get_run_logger()
    out = Path(run_dir)
    stage = f"iter-{iteration}"
    tracker = Tracker.from_config(tracking_uri, config.tracking)
    run_id = tracker.stage_run(parent_run_id, config.run_name, stage, {"prefect.flow_run_id": str(flow_run.id)})
    try:
        tracker.log_params(run_id, config.iteration_config(iteration).model_dump(mode="json"))
        prompts = with_retries(generate_prompts, config)(config, iteration, out, model, data)
        logger.info("%s: %d prompts", stage, prompts.summary.get("prompts", 0))
        candidates = with_retries(sample_candidates, config)(config, iteration, out, model, prompts)
        judgments = with_retries(judge_candidates, config)(config, iteration, out, model, candidates)
        pairs = with_retries(build_pairs, config)(config, iteration, out, candidates, judgments)
        logger.info("%s: %d preference pairs (%s skipped)", stage, pairs.summary.get("pairs", 0), pairs.summary.get("skipped", 0))
        new_model = with_retries(train_dpo, config)(
            "dpo", config, out, model, pairs, iteration=iteration, tracking_uri=tracking_uri, run_id=run_id
        )
        outcome = stage_outcome(iteration, new_model, judgments)
        if outcome != "completed":
            logger.warning("%s: %s", stage, outcome)
        evaluation = with_retries(evaluate, config)(config, stage, out, new_model, data) if config.eval.enabled else None
        metrics = record_stage(tracker, config, out, parent_run_id, run_id, iteration, new_model, evaluation,
                               pairs=pairs, judgments=judgments, candidates=candidates, prompts=prompts)
    except BaseException as err:
        tracker.fail(run_id, f"{type(err).__name__}: {err}")
        raise
    create_markdown_artifact(
        stage_summary_markdown(config.run_name, stage, metrics, tracker.run_url(run_id)),
        key=artifact_key(config.run_name, stage),
        description=f"{config.run_name} {stage} summary",
    )
    if tracking_uri.startswith("http"):
        create_link_artifact(tracker.run_url(run_id), link_text=f"MLflow run of {stage}")
    return new_model


def record_stage(
    tracker: Tracker,
    config: RunConfig,
    run_dir: Path,
    parent_run_id: str,
    run_id: str,
    index: int,
    model: StepRecord,
    evaluation: StepRecord | None,
    **step_records: StepRecord,
) -> dict[str, float]:
    """Log a finished stage to MLflow: step summaries on the child, per-stage summary on the parent
    (step = iteration, 0 for SFT), plots, and the checkpoint as a registered model version."""
    stage = "sft" if index == 0 else f"iter-{index}"
    child: dict[str, float] = {}
    for name, record in step_records.items():
        child.update({f"{name}/{k}": v for k, v in record.summary.items() if isinstance(v, int | float)})
    eval_metrics = {k: v for k, v in (evaluation.summary if evaluation else {}).items() if isinstance(v, int | float)}
    child.update({f"eval/{k}": v for k, v in eval_metrics.items()})
    tracker.log_metrics(run_id, child, step=index)

    summary = _parent_summary(step_records, model, eval_metrics)
    tracker.log_metrics(parent_run_id, summary, step=index)
    plots = run_dir / stage / "plots"
    curves = {key: tracker.metric_history(run_id, key) for key in CURVES}
    histogram = step_records["judgments"].summary.get("score_histogram", {}) if "judgments" in step_records else {}
    for png in (
        plot_learning_curves(curves, plots / "learning_curves.png", stage),
        plot_score_histogram(histogram, plots / "judge_scores.png", f"{stage}: judge scores"),
    ):
        if png is not None:
            tracker.log_artifact(run_id, png, "plots")
    if "pairs" in step_records:
        tracker.log_artifact(run_id, Path(step_records["pairs"].path) / "pairs.jsonl", "pairs")
    tags = {"selfreward.checkpoint": str(steps.model_dir(model)),
            TAG_OUTCOME: stage_outcome(index, model, step_records.get("judgments"))}
    if config.tracking.log_checkpoints:
        name = config.tracking.registered_model or f"{config.run_name}-policy"
        tags["selfreward.model_version"] = tracker.register_checkpoint(run_id, steps.model_dir(model), name, alias=stage)
    tracker.set_tags(run_id, tags)
    tracker.finish(run_id)
    return summary


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


def _parent_summary(records: dict[str, StepRecord], model: StepRecord, eval_metrics: dict[str, float]) -> dict[str, float]:
    pairs = records.get("pairs").summary if "pairs" in records else {}
    judge = records.get("judgments").summary if "judgments" in records else {}
    summary = {
        "num_pairs": pairs.get("pairs"),
        "skip_rate": pairs.get("skip_rate"),
        "parse_failure_rate": judge.get("parse_failure_rate"),
        "mean_chosen_score": pairs.get("mean_chosen_score"),
        "mean_rejected_score": pairs.get("mean_rejected_score"),
        "mean_chosen_length": pairs.get("mean_chosen_length"),
        "mean_rejected_length": pairs.get("mean_rejected_length"),
        "dpo_reward_accuracy": model.summary.get("final/rewards/accuracies"),
        "train_loss": model.summary.get("final/loss"),
        **eval_metrics,
    }
    return {k: float(v) for k, v in summary.items() if isinstance(v, int | float)}
