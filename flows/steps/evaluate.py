"""A stage's evaluation: its model answers the held-out prompts (scored by the task's checker or its own
judge), and judges the held-out judge examples (judge health)."""

from pathlib import Path

import generation
import judging
from flows.stepdir import StepRecord, fingerprint, run_step
from flows.steps.common import inference_model
from pipeline import data as run_data
from pipeline.config import RunConfig
from pipeline.evaluation import evaluate_model
from pipeline.inputs import judge_digests
from pipeline.models import InferenceModel


def eval_step(config: RunConfig, stage: str, run_dir: Path, model: StepRecord, data: StepRecord,
              loaded: InferenceModel | None = None) -> StepRecord:
    """Held-out evaluation of a stage's model (ground truth for the demo task, self-judged otherwise)."""

    def build(tmp: Path) -> dict:
        metrics, samples = evaluate_model(*(loaded or inference_model(config, model)).get(), config, Path(data.path))
        generation.write_jsonl(tmp / "samples.jsonl", samples)
        return metrics

    step_fp = fingerprint("eval", config.eval.model_dump(), config.iteration.judge.model_dump(), model.fingerprint, data.fingerprint,
                          *judge_digests(config.iteration.judge))
    return run_step("eval", run_dir / stage / "eval", step_fp, build)


def judge_health_step(config: RunConfig, stage: str, run_dir: Path, model: StepRecord, data: StepRecord,
                      loaded: InferenceModel | None = None) -> StepRecord:
    """How well a stage's model judges: it judges the held-out EFT examples as it judges candidates
    (the iterations' template, K and sampling) and the rates are kept with the stage."""
    judge = config.iteration.judge

    def build(tmp: Path) -> dict:
        examples = run_data.read_records(Path(data.path), run_data.HELDOUT_EFT)
        if not examples:
            return {"examples": 0}
        health, samples = judging.judge_health(
            *(loaded or inference_model(config, model)).get(), examples, judging.load_template(judge.template),
            num_judgments=judge.num_judgments, params=judge.sampling.to(generation.SamplingParams, seed=config.seed))
        generation.write_jsonl(tmp / "samples.jsonl", samples)
        return health.as_dict()

    step_fp = fingerprint("judge-health", judge.model_dump(), model.fingerprint, data.fingerprint, config.seed)
    return run_step("judge-health", run_dir / stage / "judge_health", step_fp, build)
