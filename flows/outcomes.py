"""Decisions an iteration makes before it trusts its judge and its data.

- Which model judges (`iteration.judge.judge_model` and its health gate): the judge-health records
  of every stage so far, measured on held-out EFT examples, decide (`judging.pick_judge`).
- What happens when the iteration cannot improve the model (no prompts, no pairs, no judge that
  passes its gate): `iteration.on_degenerate` says stop (the run fails with a message), skip
  (M_{t+1} = M_t, outcome `skipped`) or fall back (pool prompts, the last healthy judge).
"""

from pathlib import Path

from prefect import get_run_logger

import judging
from flows.stepdir import StepRecord
from flows.tasks import StepTasks
from pipeline.config import RunConfig
from pipeline.models import InferenceModel
from pipeline.report import stage_name


class DegenerateIterationError(RuntimeError):
    """An iteration could not improve the model and `iteration.on_degenerate` is `stop`."""


def degenerate(config: RunConfig, iteration: int, problem: str) -> tuple[str, str | None]:
    """Apply `on_degenerate` to `problem`: raise (stop), or warn and return `(action, skip reason)`;
    the reason is set for `skip`, None for `fallback` (the caller falls back).

    Raises:
        DegenerateIterationError: when the policy is `stop`.
    """
    policy = config.iteration_config(iteration).on_degenerate
    if policy == "stop":
        raise DegenerateIterationError(
            f"iter-{iteration}: {problem}. The run stops here (iteration.on_degenerate: stop) and M{iteration} stays "
            f"the latest model; set iteration.on_degenerate to skip or fallback to go on regardless, or fix the "
            f"cause and start a new run")
    get_run_logger().warning("iter-%d: %s (on_degenerate: %s)", iteration, problem, policy)
    return policy, problem if policy == "skip" else None


def model_stage(config: RunConfig, index: int) -> str:
    """The stage whose model is `models[index]` (M1 comes from SFT, or is the base model without it)."""
    if config.sft.enabled:
        return stage_name(index)
    return "base" if index == 0 else stage_name(index)


def choose_judge(tasks: StepTasks, config: RunConfig, iteration: int, run_dir: Path, models: list[StepRecord],
                 data: StepRecord, m_t: InferenceModel) -> tuple[int | None, str]:
    """The index into `models` of the model that judges this iteration, and why (None: none may).

    Each stage's judge health was measured when the stage finished, so this reads it back; only a
    model that never was a stage's output (the base model, without SFT) is measured here.
    """
    cfg = config.iteration_config(iteration)
    if cfg.judge.reward_fn:
        return len(models) - 1, f"reward function {cfg.judge.reward_fn}"
    healths = [tasks.judge_health(config, model_stage(config, i), run_dir, m, data, m_t if m is models[-1] else None).summary
               for i, m in enumerate(models)]
    return judging.pick_judge(healths, cfg.judge.judge_model, cfg.judge.gate.to(judging.JudgeGate),
                              fallback=cfg.on_degenerate == "fallback")
