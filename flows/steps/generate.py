"""An iteration's generation steps: its prompts (self-instruct or a pool draw) and N candidates per prompt."""

from pathlib import Path

import generation
from flows.stepdir import Salt, StepRecord, fingerprint, iter_dir, run_step, step_seed
from pipeline import data as run_data
from pipeline.config import RunConfig
from pipeline.models import InferenceModel


def prompts_step(config: RunConfig, iteration: int, run_dir: Path, model: StepRecord, data: StepRecord,
                 loaded: InferenceModel) -> StepRecord:
    """New prompts for this iteration: self-instruct by M_t from the seed pool, or drawn from it."""
    cfg, seed = config.iteration_config(iteration).prompts, step_seed(config.seed, iteration, Salt.PROMPTS)

    def build(tmp: Path) -> dict:
        pool = [r["prompt"] for r in run_data.read_records(Path(data.path), "seed_prompts.jsonl")]
        if cfg.source == "seed":
            prompts, rejected = generation.sample_pool(pool, cfg.num_prompts, seed), {}
        else:
            result = generation.self_instruct(
                *loaded.get(), pool, num_prompts=cfg.num_prompts, shots=cfg.shots,
                params=cfg.sampling.to(generation.SamplingParams, seed=seed),
                filters=cfg.to(generation.PromptFilter))
            prompts, rejected = result.prompts, dict(result.rejected)
        return {"prompts": generation.write_prompt_file(tmp / generation.PROMPTS_FILE, prompts), "rejected": rejected}

    step_fp = fingerprint("prompts", cfg.model_dump(), model.fingerprint, data.fingerprint, seed)
    return run_step("prompts", iter_dir(run_dir, iteration) / "prompts", step_fp, build)


def candidates_step(config: RunConfig, iteration: int, run_dir: Path, model: StepRecord, prompts: StepRecord,
                    loaded: InferenceModel) -> StepRecord:
    """N candidate responses per prompt from M_t."""
    cfg, seed = config.iteration_config(iteration).candidates, step_seed(config.seed, iteration, Salt.CANDIDATES)

    def build(tmp: Path) -> dict:
        stats = generation.sample_candidates(*loaded.get(), Path(prompts.path) / generation.PROMPTS_FILE, tmp,
                                             num_samples=cfg.num, params=cfg.sampling.to(generation.SamplingParams, seed=seed))
        return {"sequences": stats.sequences, "new_tokens": stats.new_tokens, "tokens_per_second": stats.tokens_per_second}

    step_fp = fingerprint("candidates", cfg.model_dump(), model.fingerprint, prompts.fingerprint, seed)
    return run_step("candidates", iter_dir(run_dir, iteration) / "candidates", step_fp, build)
