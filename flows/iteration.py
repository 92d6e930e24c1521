"""One self-rewarding iteration as a Prefect subflow: M_t -> M_{t+1}, a task per step."""

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows import steps
from flows.launch import CurveTarget
from flows.stage import finish_stage
from flows.stepdir import StepRecord
from flows.tasks import step_tasks
from pipeline.config import RunConfig
from pipeline.report import stage_name
from pipeline.tracking import Tracker


@flow(name="selfreward-iteration", flow_run_name="iter-{iteration}", log_prints=True)
def iteration_flow(config: RunConfig, iteration: int, run_dir: str, model: StepRecord, data: StepRecord,
                   parent_run_id: str, tracking_uri: str) -> StepRecord:
    """Generate prompts, sample, self-judge, build pairs, DPO with the reference reset to M_t, evaluate."""
    tasks, out, stage, logger = step_tasks(config.runtime), Path(run_dir), stage_name(iteration), get_run_logger()
    tracker = Tracker.from_config(tracking_uri, config.tracking)
    with tracker.stage(parent_run_id, config.run_name, stage, {"prefect.flow_run_id": str(flow_run.id)}) as run_id:
        tracker.log_params(run_id, config.iteration_config(iteration).model_dump(mode="json"))
        m_t = steps.inference_model(config, model)  # loaded once, read by the next three steps
        prompts = tasks.prompts(config, iteration, out, model, data, m_t)
        logger.info("%s: %d prompts", stage, prompts.summary.get("prompts", 0))
        candidates = tasks.candidates(config, iteration, out, model, prompts, m_t)
        judgments = tasks.judge(config, iteration, out, model, candidates, m_t)
        m_t.release()  # DPO loads its own copy to train
        pairs = tasks.pairs(config, iteration, out, candidates, judgments)
        logger.info("%s: %d preference pairs (%s skipped)", stage, pairs.summary.get("pairs", 0),
                    pairs.summary.get("skipped", 0))
        new_model = tasks.dpo(config, iteration, out, model, pairs, CurveTarget(tracking_uri, run_id))
        finish_stage(tasks, tracker, config, out, parent_run_id, run_id, iteration, new_model, data,
                     prompts=prompts, candidates=candidates, judgments=judgments, pairs=pairs)
    return new_model
