"""The steps as Prefect tasks, and the one place their retry policy is set.

Resume is decided by the step folders (`flows/stepdir.py`), so Prefect's own result cache is off:
a wiped Prefect home, or a deployment with another home, resumes the same way. Every task run is
named `<step>` or `<step>-<stage>` (`sft`, `judge-iter-2`, `eval-iter-2`). The training steps go
through `flows.launch`'s launchers and the generation steps through `launch.data_parallel`, so
`runtime` decides where each runs.
"""

from typing import NamedTuple

from prefect import Task, task
from prefect.cache_policies import NONE

from dpo import NonFiniteLossError
from flows import launch, steps
from flows.stepdir import DiskFullError
from pipeline.config import RuntimeConfig
from pipeline.tracking import TrackingUnavailableError

# Errors a retry cannot fix: bad input (ValueError subclasses), a diverged loss, a full disk, and an
# MLflow outage (the Tracker already retried it with back-off).
NOT_RETRIED = (ValueError, NonFiniteLossError, DiskFullError, TrackingUnavailableError)


def worth_retrying(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry a failed step unless its error is deterministic."""
    return not isinstance(state.data, NOT_RETRIED)


def _step_task(fn, name: str, run_name: str) -> Task:
    return task(fn, name=name, task_run_name=run_name, cache_policy=NONE, retry_condition_fn=worth_retrying)


class StepTasks(NamedTuple):
    """One task per step."""

    data: Task
    base_model: Task
    sft: Task
    prompts: Task
    candidates: Task
    judge: Task
    meta_judge: Task
    consistency: Task
    pairs: Task
    dpo: Task
    evaluate: Task
    judge_health: Task


TASKS = StepTasks(
    data=_step_task(steps.data_step, "data", "data"),
    base_model=_step_task(steps.base_model_step, "base-model", "base-model"),
    sft=_step_task(launch.launch_sft, "sft", "sft"),
    prompts=_step_task(launch.data_parallel(steps.prompts_step), "prompts", "prompts-iter-{iteration}"),
    candidates=_step_task(launch.data_parallel(steps.candidates_step), "candidates", "candidates-iter-{iteration}"),
    judge=_step_task(launch.data_parallel(steps.judge_step), "judge", "judge-iter-{iteration}"),
    meta_judge=_step_task(launch.data_parallel(steps.meta_judge_step), "meta-judge", "meta-judge-iter-{iteration}"),
    consistency=_step_task(launch.data_parallel(steps.consistency_step), "consistency", "consistency-iter-{iteration}"),
    pairs=_step_task(steps.pairs_step, "pairs", "pairs-iter-{iteration}"),
    dpo=_step_task(launch.launch_dpo, "dpo", "dpo-iter-{iteration}"),
    evaluate=_step_task(launch.data_parallel(steps.eval_step), "eval", "eval-{stage}"),
    judge_health=_step_task(launch.data_parallel(steps.judge_health_step), "judge-health", "judge-health-{stage}"),
)


def step_tasks(runtime: RuntimeConfig) -> StepTasks:
    """Every step's task with the run's retry policy (`runtime.retries`, `runtime.retry_delay_seconds`)."""
    return StepTasks(*(t.with_options(retries=runtime.retries, retry_delay_seconds=runtime.retry_delay_seconds)
                       for t in TASKS))
