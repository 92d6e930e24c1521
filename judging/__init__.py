"""LLM-as-a-judge scoring, pair selection and preference-data writing for self-rewarding DPO.

Steps: `judge_candidates` (candidates file -> judgments file, with `model_judge` or `reward_judge`),
then `build_preference_pairs(folder, read_judged_prompts(candidates, judgments))` (one pair per
prompt by `select_pair`, streamed to disk by `PreferenceWriter`). `judge_responses` is the judge
itself, for in-memory lists.
"""

from judging.aggregate import CandidateJudgment, JudgingStats, aggregate_judgments
from judging.build import PairBuildSummary, build_preference_pairs
from judging.consistency import consistency_rate, kendall_tau, measure_consistency
from judging.external import RewardFn, RewardFunctionError, load_reward_fn, score_with_reward_fn
from judging.health import JudgeGate, JudgeHealth, judge_health, pick_judge, score_health
from judging.judge import JudgeError, judge_rendered, judge_responses
from judging.judgments import (
    JUDGE_CHUNK_PROMPTS,
    JUDGMENTS_FILE,
    Judge,
    JudgedPrompt,
    judge_candidates,
    model_judge,
    read_judged_prompts,
    reward_judge,
)
from judging.meta import (
    JUDGE_PAIRS_FILE,
    JudgePair,
    MetaTemplate,
    compare_judgments,
    corrupt_judgment,
    load_meta_template,
    meta_judge_examples,
    read_judge_pairs,
    write_judge_pairs,
)
from judging.pairs import (
    PAIR_STRATEGIES,
    PairChoice,
    PairSelectionError,
    PairSkip,
    PairStats,
    PairStrategy,
    SkipReason,
    select_anchored,
    select_pair,
)
from judging.parse import normalize_judgment, parse_score
from judging.template import PACKAGED_TEMPLATES, JudgeTemplate, TemplateError, load_template
from judging.writer import SUMMARY_FILE, OverflowPolicy, PreferenceWriter, WriterError

__all__ = [
    "JUDGE_CHUNK_PROMPTS",
    "JUDGE_PAIRS_FILE",
    "JUDGMENTS_FILE",
    "PACKAGED_TEMPLATES",
    "PAIR_STRATEGIES",
    "SUMMARY_FILE",
    "CandidateJudgment",
    "Judge",
    "JudgeError",
    "JudgeGate",
    "JudgeHealth",
    "JudgePair",
    "JudgeTemplate",
    "JudgedPrompt",
    "JudgingStats",
    "MetaTemplate",
    "OverflowPolicy",
    "PairBuildSummary",
    "PairChoice",
    "PairSelectionError",
    "PairSkip",
    "PairStats",
    "PairStrategy",
    "PreferenceWriter",
    "RewardFn",
    "RewardFunctionError",
    "SkipReason",
    "TemplateError",
    "WriterError",
    "aggregate_judgments",
    "build_preference_pairs",
    "compare_judgments",
    "consistency_rate",
    "corrupt_judgment",
    "judge_candidates",
    "judge_health",
    "judge_rendered",
    "judge_responses",
    "kendall_tau",
    "load_meta_template",
    "load_reward_fn",
    "load_template",
    "measure_consistency",
    "meta_judge_examples",
    "model_judge",
    "normalize_judgment",
    "parse_score",
    "pick_judge",
    "read_judge_pairs",
    "read_judged_prompts",
    "reward_judge",
    "score_health",
    "score_with_reward_fn",
    "select_anchored",
    "select_pair",
    "write_judge_pairs",
]
