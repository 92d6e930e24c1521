"""Every step is a task with readable run names and the run's retry policy; deterministic errors are
not retried."""

from types import SimpleNamespace

from dpo import NonFiniteLossError
from flows.stepdir import DiskFullError
from flows.tasks import TASKS, step_tasks, worth_retrying
from pipeline.config import ConfigError, load_config


def test_run_names_are_step_or_step_and_stage():
    names = {t.name: t.task_run_name for t in TASKS}
    assert names == {"data": "data", "base-model": "base-model", "sft": "sft",
                     "prompts": "prompts-iter-{iteration}", "candidates": "candidates-iter-{iteration}",
                     "judge": "judge-iter-{iteration}", "meta-judge": "meta-judge-iter-{iteration}",
                     "consistency": "consistency-iter-{iteration}", "pairs": "pairs-iter-{iteration}",
                     "dpo": "dpo-iter-{iteration}", "eval": "eval-{stage}", "judge-health": "judge-health-{stage}"}


def test_the_runs_retry_policy_reaches_every_task():
    tasks = step_tasks(load_config(None, ["runtime.retries=3", "runtime.retry_delay_seconds=0.5"]).runtime)
    assert {(t.retries, t.retry_delay_seconds) for t in tasks} == {(3, 0.5)}
    assert all(t.retry_condition_fn is worth_retrying for t in tasks)


def test_deterministic_errors_are_not_retried():
    def state(err):
        return SimpleNamespace(data=err)

    for err in (ConfigError("bad"), NonFiniteLossError("nan"), DiskFullError("full")):
        assert not worth_retrying(None, None, state(err))
    assert worth_retrying(None, None, state(RuntimeError("flaky")))
