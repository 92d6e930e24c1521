"""An iteration's judging steps: the judge scores the candidates, optional meta-judging and consistency
checks, then one pair per prompt is built."""

from pathlib import Path

import generation
import judging
from flows.stepdir import Salt, StepRecord, fingerprint, iter_dir, run_step, step_seed
from pipeline.config import RunConfig
from pipeline.inputs import judge_digests
from pipeline.models import InferenceModel


def _judged(candidates: StepRecord, judgments: StepRecord):
    return judging.read_judged_prompts(Path(candidates.path) / generation.CANDIDATES_FILE,
                                       Path(judgments.path) / judging.JUDGMENTS_FILE)


def judge_step(config: RunConfig, iteration: int, run_dir: Path, judge: StepRecord, candidates: StepRecord,
               loaded: InferenceModel) -> StepRecord:
    """The judge (M_t, or the model the judge choice picked) scores every candidate K times, or an
    external reward function scores them."""
    cfg, seed = config.iteration_config(iteration).judge, step_seed(config.seed, iteration, Salt.JUDGE)

    def build(tmp: Path) -> dict:
        if cfg.reward_fn:
            judge_fn = judging.reward_judge(judging.load_reward_fn(cfg.reward_fn))
        else:
            judge_fn = judging.model_judge(*loaded.get(), judging.load_template(cfg.template), cfg.num_judgments,
                                           cfg.sampling.to(generation.SamplingParams, seed=seed))
        candidates_file = Path(candidates.path) / generation.CANDIDATES_FILE
        chunk = max(judging.JUDGE_CHUNK_PROMPTS, cfg.sampling.batch_size)
        return judging.judge_candidates(judge_fn, candidates_file, tmp, chunk_prompts=chunk).summary()

    step_fp = fingerprint("judge", cfg.model_dump(), judge.fingerprint, candidates.fingerprint, seed, *judge_digests(cfg))
    return run_step("judge", iter_dir(run_dir, iteration) / "judgments", step_fp, build)


def meta_judge_step(config: RunConfig, iteration: int, run_dir: Path, judge: StepRecord, candidates: StepRecord,
                    judgments: StepRecord, loaded: InferenceModel) -> StepRecord:
    """The judge compares pairs of its own judgments of disputed candidates (Meta-Rewarding): best vs
    worst judgment become judge pairs for this iteration's DPO round."""
    cfg, seed = config.iteration_config(iteration), step_seed(config.seed, iteration, Salt.META_JUDGE)

    def build(tmp: Path) -> dict:
        return judging.write_judge_pairs(
            *loaded.get(), _judged(candidates, judgments), tmp, template=judging.load_template(cfg.judge.template),
            meta=judging.load_meta_template(cfg.meta_judge.template), max_candidates=cfg.meta_judge.max_candidates,
            params=cfg.meta_judge.sampling.to(generation.SamplingParams, seed=seed))

    step_fp = fingerprint("meta-judge", cfg.meta_judge.model_dump(), cfg.judge.template, judge.fingerprint,
                          judgments.fingerprint, seed)
    return run_step("meta-judge", iter_dir(run_dir, iteration) / "judge-pairs", step_fp, build)


def consistency_step(config: RunConfig, iteration: int, run_dir: Path, previous: StepRecord, candidates: StepRecord,
                     judgments: StepRecord, loaded_previous: InferenceModel) -> StepRecord:
    """The previous stage's judge re-scores some prompts' candidates; the rank agreement sets this
    round's label smoothing (CREAM)."""
    cfg, seed = config.iteration_config(iteration), step_seed(config.seed, iteration, Salt.CONSISTENCY)

    def build(tmp: Path) -> dict:
        previous_judge = judging.model_judge(*loaded_previous.get(), judging.load_template(cfg.judge.template),
                                             cfg.judge.num_judgments, cfg.judge.sampling.to(generation.SamplingParams, seed=seed))
        return judging.measure_consistency(previous_judge, _judged(candidates, judgments), cfg.consistency.max_prompts)

    step_fp = fingerprint("consistency", cfg.consistency.model_dump(), cfg.judge.model_dump(), previous.fingerprint,
                          judgments.fingerprint, seed)
    return run_step("consistency", iter_dir(run_dir, iteration) / "consistency", step_fp, build)


def pairs_step(config: RunConfig, iteration: int, run_dir: Path, candidates: StepRecord, judgments: StepRecord,
               judge_pairs: StepRecord | None = None) -> StepRecord:
    """One preference pair per prompt by `pairs.strategy` (ties dropped; anchored rejection when the
    candidates have anchors), plus capped judge pairs, streamed into the DPO memmaps."""
    cfg, seed = config.iteration_config(iteration), step_seed(config.seed, iteration, Salt.PAIRS)

    def build(tmp: Path) -> dict:
        extra = judging.read_judge_pairs(Path(judge_pairs.path) / judging.JUDGE_PAIRS_FILE) if judge_pairs else []
        max_len = max(cfg.dpo.max_len, cfg.meta_judge.max_len) if extra else cfg.dpo.max_len
        return judging.build_preference_pairs(tmp, _judged(candidates, judgments), max_len=max_len,
                                              strategy=cfg.pairs.strategy, rho=cfg.pairs.rho, seed=seed,
                                              judge_pairs=extra, judge_share=cfg.meta_judge.max_share).summary()

    step_fp = fingerprint("pairs", cfg.pairs.model_dump(), cfg.dpo.max_len, candidates.fingerprint, judgments.fingerprint,
                          seed, *([judge_pairs.fingerprint, cfg.meta_judge.max_share] if judge_pairs else []))
    return run_step("pairs", iter_dir(run_dir, iteration) / "pairs", step_fp, build)
