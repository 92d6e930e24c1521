"""A stage's evaluation: its model answers the held-out prompts, scored by the task's checker or its own judge."""

from pathlib import Path

import generation
from flows.stepdir import StepRecord, fingerprint, run_step
from flows.steps.common import inference_model
from pipeline.config import RunConfig
from pipeline.evaluation import evaluate_model
from pipeline.inputs import judge_digests


def eval_step(config: RunConfig, stage: str, run_dir: Path, model: StepRecord, data: StepRecord) -> StepRecord:
    """Held-out evaluation of a stage's model (ground truth for the demo task, self-judged otherwise)."""

    def build(tmp: Path) -> dict:
        metrics, samples = evaluate_model(*inference_model(config, model).get(), config, Path(data.path))
        generation.write_jsonl(tmp / "samples.jsonl", samples)
        return metrics

    step_fp = fingerprint("eval", config.eval.model_dump(), config.iteration.judge.model_dump(), model.fingerprint, data.fingerprint,
                          *judge_digests(config.iteration.judge))
    return run_step("eval", run_dir / stage / "eval", step_fp, build)
