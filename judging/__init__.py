"""LLM-as-a-judge scoring, pair selection and preference-data writing for self-rewarding DPO.

Flow: `load_template` -> `judge_candidates` (or `load_reward_fn` + `score_with_reward_fn`) ->
`build_preference_pairs` (`select_pair` per prompt, `PreferenceWriter` to disk).
"""

from judging.aggregate import CandidateJudgment, JudgingStats, aggregate_judgments
from judging.build import CandidateLike, PairBuildSummary, build_preference_pairs
from judging.external import RewardFn, RewardFunctionError, load_reward_fn, score_with_reward_fn
from judging.judge import JudgeError, judge_candidates
from judging.pairs import (
    PAIR_STRATEGIES,
    PairChoice,
    PairSelectionError,
    PairSkip,
    PairStats,
    PairStrategy,
    SkipReason,
    select_pair,
)
from judging.parse import normalize_judgment, parse_score
from judging.template import PACKAGED_TEMPLATES, JudgeTemplate, TemplateError, load_template
from judging.writer import SUMMARY_FILE, OverflowPolicy, PreferenceWriter, WriterError

__all__ = [
    "PACKAGED_TEMPLATES",
    "PAIR_STRATEGIES",
    "SUMMARY_FILE",
    "CandidateJudgment",
    "CandidateLike",
    "JudgeError",
    "JudgeTemplate",
    "JudgingStats",
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
    "judge_candidates",
    "load_reward_fn",
    "load_template",
    "normalize_judgment",
    "parse_score",
    "score_with_reward_fn",
    "select_pair",
]
