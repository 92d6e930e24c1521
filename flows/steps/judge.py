"""An iteration's judging steps: the judge scores the candidates, then one pair per prompt is built."""

from pathlib import Path

import generation
import judging
from flows.stepdir import Salt, StepRecord, fingerprint, iter_dir, run_step, step_seed
from pipeline.config import RunConfig
from pipeline.inputs import judge_digests
from pipeline.models import InferenceModel


def judge_step(config: RunConfig, iteration: int, run_dir: Path, model: StepRecord, candidates: StepRecord,
               loaded: InferenceModel) -> StepRecord:
    """M_t judges its own candidates K times each (or an external reward function scores them)."""
    cfg, seed = config.iteration_config(iteration).judge, step_seed(config.seed, iteration, Salt.JUDGE)

    def build(tmp: Path) -> dict:
        if cfg.reward_fn:
            judge = judging.reward_judge(judging.load_reward_fn(cfg.reward_fn))
        else:
            judge = judging.model_judge(*loaded.get(), judging.load_template(cfg.template), cfg.num_judgments,
                                        cfg.sampling.to(generation.SamplingParams, seed=seed))
        candidates_file = Path(candidates.path) / generation.CANDIDATES_FILE
        chunk = max(judging.JUDGE_CHUNK_PROMPTS, cfg.sampling.batch_size)
        return judging.judge_candidates(judge, candidates_file, tmp, chunk_prompts=chunk).summary()

    step_fp = fingerprint("judge", cfg.model_dump(), model.fingerprint, candidates.fingerprint, seed, *judge_digests(cfg))
    return run_step("judge", iter_dir(run_dir, iteration) / "judgments", step_fp, build)


def pairs_step(config: RunConfig, iteration: int, run_dir: Path, candidates: StepRecord, judgments: StepRecord) -> StepRecord:
    """One preference pair per prompt by `pairs.strategy` (ties dropped), streamed into the DPO memmaps."""
    cfg, seed = config.iteration_config(iteration), step_seed(config.seed, iteration, Salt.PAIRS)

    def build(tmp: Path) -> dict:
        judged = judging.read_judged_prompts(Path(candidates.path) / generation.CANDIDATES_FILE,
                                             Path(judgments.path) / judging.JUDGMENTS_FILE)
        return judging.build_preference_pairs(tmp, judged, max_len=cfg.dpo.max_len, strategy=cfg.pairs.strategy,
                                              rho=cfg.pairs.rho, seed=seed).summary()

    step_fp = fingerprint("pairs", cfg.pairs.model_dump(), cfg.dpo.max_len, candidates.fingerprint, judgments.fingerprint, seed)
    return run_step("pairs", iter_dir(run_dir, iteration) / "pairs", step_fp, build)
