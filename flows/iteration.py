"""One self-rewarding iteration as a Prefect subflow: M_t -> M_{t+1}, a task per step.

prompts -> candidates -> (judge choice) -> judgments -> [meta-judge pairs] -> [consistency] -> pairs
-> DPO (reference reset to M_t) -> evaluation and judge health of M_{t+1}.

An iteration that cannot improve the model (no prompts, no pairs, or no judge passing its gate) is
a named outcome, handled as `iteration.on_degenerate` says (`flows/outcomes.py`).
"""

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows import steps
from flows.launch import CurveTarget
from flows.outcomes import choose_judge, degenerate
from flows.stage import finish_stage
from flows.stepdir import StepRecord
from flows.tasks import StepTasks, step_tasks
from pipeline.config import RunConfig
from pipeline.report import stage_name
from pipeline.tracking import Tracker, portable_paths


@flow(name="selfreward-iteration", flow_run_name="iter-{iteration}", log_prints=True)
def iteration_flow(config: RunConfig, iteration: int, run_dir: str, models: list[StepRecord], data: StepRecord,
                   parent_run_id: str, tracking_uri: str) -> StepRecord:
    """One iteration from M_t = `models[-1]`; `models` holds every stage's model so far (M1 first)."""
    tasks, out, stage, logger = step_tasks(config.runtime), Path(run_dir), stage_name(iteration), get_run_logger()
    cfg, model = config.iteration_config(iteration), models[-1]
    tracker = Tracker.from_config(tracking_uri, config.tracking)
    with tracker.stage(parent_run_id, config.run_name, stage, {"prefect.flow_run_id": str(flow_run.id)}) as run_id:
        tracker.log_params(run_id, portable_paths(cfg.model_dump(mode="json"), out.parent))
        m_t = steps.inference_model(config, model)  # loaded once, read by the generation and judge steps
        prompts, skip = _prompts(tasks, config, iteration, out, model, data, m_t)
        logger.info("%s: %d prompts (%s)", stage, prompts.summary.get("prompts", 0), prompts.summary.get("source"))
        judge_index, judge_reason = choose_judge(tasks, config, iteration, out, models, data, m_t)
        tracker.set_tags(run_id, {"selfreward.judge": judge_reason})
        if judge_index is None and skip is None:
            # choose_judge already fell back where a healthy judge existed: no judge left means skip
            skip = degenerate(config, iteration, judge_reason)[1] or judge_reason
        pairs = consistency = None
        records = {"prompts": prompts}
        if skip is None:
            pairs, consistency = _judge_and_pair(tasks, config, iteration, out, models, judge_index, m_t, prompts, records)
            if not pairs.summary.get("pairs"):
                _, skip = degenerate(config, iteration, f"no preference pairs (skipped: {pairs.summary.get('skipped')})")
        m_t.release()  # DPO loads its own copy to train
        new_model = tasks.dpo(config, iteration, out, model, pairs, data, consistency, skip,
                              CurveTarget(tracking_uri, run_id))
        finish_stage(tasks, tracker, config, out, parent_run_id, run_id, iteration, new_model, data, **records)
    return new_model


def _prompts(tasks: StepTasks, config: RunConfig, iteration: int, out: Path, model: StepRecord, data: StepRecord,
             m_t) -> tuple[StepRecord, str | None]:
    """This iteration's prompts and, when there are none and `on_degenerate` is skip, the reason to skip;
    with `fallback` the seed pool's prompts stand in for a self-instruct step that produced nothing."""
    prompts = tasks.prompts(config, iteration, out, model, data, m_t)
    if prompts.summary.get("prompts"):
        return prompts, None
    action, skip = degenerate(config, iteration, f"self-instruct produced no prompts ({prompts.summary['rejected']})")
    if action == "fallback":
        return tasks.prompts(config, iteration, out, model, data, m_t, source="seed"), None
    return prompts, skip


def _judge_and_pair(tasks: StepTasks, config: RunConfig, iteration: int, out: Path, models: list[StepRecord],
                    judge_index: int, m_t, prompts: StepRecord, records: dict) -> tuple[StepRecord, StepRecord | None]:
    """Candidates, judgments, the optional remedies, pairs; adds each step's record to `records`."""
    cfg, model, logger = config.iteration_config(iteration), models[-1], get_run_logger()
    held = {id(model): m_t}  # each model is read at most once; M_t is already in memory

    def loaded(record: StepRecord):
        if id(record) not in held:
            held[id(record)] = steps.inference_model(config, record)
        return held[id(record)]

    judge = models[judge_index]
    anchor = models[0] if cfg.candidates.anchor_samples else None
    records["candidates"] = tasks.candidates(config, iteration, out, model, prompts, m_t, anchor,
                                             loaded(anchor) if anchor is not None else None)
    records["judgments"] = tasks.judge(config, iteration, out, judge, records["candidates"], loaded(judge))
    judge_pairs = consistency = None
    if cfg.meta_judge.enabled and not cfg.judge.reward_fn:
        judge_pairs = records["judge_pairs"] = tasks.meta_judge(config, iteration, out, judge, records["candidates"],
                                                                records["judgments"], loaded(judge))
    if cfg.consistency.enabled and len(models) > 1 and not cfg.judge.reward_fn:
        consistency = records["consistency"] = tasks.consistency(
            config, iteration, out, models[-2], records["candidates"], records["judgments"], loaded(models[-2]))
    for other in held.values():
        if other is not m_t:
            other.release()
    pairs = records["pairs"] = tasks.pairs(config, iteration, out, records["candidates"], records["judgments"], judge_pairs)
    logger.info("iter-%d: %d preference pairs (%s skipped)", iteration, pairs.summary.get("pairs", 0),
                pairs.summary.get("skipped", 0))
    return pairs, consistency
