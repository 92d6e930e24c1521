"""An iteration's generation steps: its prompts (self-instruct or a pool draw) and N candidates per prompt."""

from pathlib import Path
from typing import Literal

import generation
from flows.stepdir import Salt, StepRecord, fingerprint, iter_dir, run_step, step_seed
from pipeline import data as run_data
from pipeline.config import RunConfig
from pipeline.evaluation import prompt_quality
from pipeline.models import InferenceModel


def prompts_step(config: RunConfig, iteration: int, run_dir: Path, model: StepRecord, data: StepRecord,
                 loaded: InferenceModel, source: Literal["self_instruct", "seed"] | None = None) -> StepRecord:
    """New prompts for this iteration: self-instruct by M_t from the seed pool, or drawn from it.

    `source` overrides `prompts.source` (the fallback when self-instruct produced nothing); the
    override writes its own folder, so the self-instruct attempt stays on disk.
    """
    cfg, seed = config.iteration_config(iteration).prompts, step_seed(config.seed, iteration, Salt.PROMPTS)
    source = source or cfg.source

    def build(tmp: Path) -> dict:
        pool = [r["prompt"] for r in run_data.read_records(Path(data.path), "seed_prompts.jsonl")]
        if source == "seed":
            prompts, rejected = generation.sample_pool(pool, cfg.num_prompts, seed), {}
        else:
            result = generation.self_instruct(
                *loaded.get(), pool, num_prompts=cfg.num_prompts, shots=cfg.shots,
                params=cfg.sampling.to(generation.SamplingParams, seed=seed), filters=cfg.to(generation.PromptFilter),
                avoid=[r["prompt"] for r in run_data.read_records(Path(data.path), "eval.jsonl")])
            prompts, rejected = result.prompts, dict(result.rejected)
        count = generation.write_prompt_file(tmp / generation.PROMPTS_FILE, prompts)
        return {"prompts": count, "source": source, "rejected": rejected, **prompt_quality(config, prompts)}

    step_fp = fingerprint("prompts", cfg.model_dump(), source, model.fingerprint, data.fingerprint, seed)
    folder = "prompts" if source == cfg.source else f"prompts-from-{source}"
    return run_step("prompts", iter_dir(run_dir, iteration) / folder, step_fp, build)


def candidates_step(config: RunConfig, iteration: int, run_dir: Path, model: StepRecord, prompts: StepRecord,
                    loaded: InferenceModel, anchor: StepRecord | None = None,
                    anchor_loaded: InferenceModel | None = None) -> StepRecord:
    """N candidate responses per prompt from M_t (and, for anchored rejection, a few from `anchor`)."""
    cfg, seed = config.iteration_config(iteration).candidates, step_seed(config.seed, iteration, Salt.CANDIDATES)
    anchors = cfg.anchor_samples if anchor is not None else 0

    def build(tmp: Path) -> dict:
        summary = generation.sample_candidates(
            *loaded.get(), Path(prompts.path) / generation.PROMPTS_FILE, tmp, num_samples=cfg.num,
            params=cfg.sampling.to(generation.SamplingParams, seed=seed),
            anchor_model=anchor_loaded.get()[0] if anchors else None, anchor_samples=anchors)
        return summary.as_dict()

    step_fp = fingerprint("candidates", cfg.model_dump(), model.fingerprint, prompts.fingerprint, seed,
                          anchor.fingerprint if anchors else None)
    return run_step("candidates", iter_dir(run_dir, iteration) / "candidates", step_fp, build)
