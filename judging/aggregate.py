"""What a judge said about a candidate, and running counts over many candidates.

Kept apart from `judge.py` so that external reward functions, pair building and tests can use these
types without importing the generation stack.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from judging.parse import parse_score
from judging.template import JudgeTemplate

__all__ = ["CandidateJudgment", "JudgingStats", "aggregate_judgments"]


@dataclass(frozen=True)
class CandidateJudgment:
    """The judge's verdict on one candidate.

    Attributes:
        score: mean of the parsed scores, or None when no judgment parsed.
        scores: one entry per judgment (None where it did not parse).
        judgments: the judgment texts (empty for external reward functions).
    """

    score: float | None
    scores: list[float | None]
    judgments: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "scores": self.scores, "judgments": self.judgments}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> "CandidateJudgment":
        return cls(score=row["score"], scores=list(row["scores"]), judgments=list(row["judgments"]))


@dataclass
class JudgingStats:
    """Counters accumulated over judging calls, for logging.

    Attributes:
        candidates: candidates judged.
        unscored_candidates: candidates with no parsed judgment (score None).
        judgments: judgment samples generated (or external scores received).
        parse_failures: judgments that gave no valid score.
        score_histogram: parsed judgment scores counted per rounded integer bucket.
        too_long_prompts: judge prompts that did not fit `max_prompt_tokens` even with the response cut.
        truncated_responses: judge prompts whose candidate response was shortened to fit.
        prompt_tokens: judge prompt tokens over all judged candidates.
        max_prompt_tokens: longest judge prompt seen.
        new_tokens: judgment tokens generated.
        seconds: wall-clock time spent generating judgments.
    """

    candidates: int = 0
    unscored_candidates: int = 0
    judgments: int = 0
    parse_failures: int = 0
    score_histogram: dict[int, int] = field(default_factory=dict)
    too_long_prompts: int = 0
    truncated_responses: int = 0
    prompt_tokens: int = 0
    max_prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def parse_failure_rate(self) -> float | None:
        """Unparsable judgments / judgments; None (n/a) when nothing was judged."""
        return self.parse_failures / self.judgments if self.judgments else None

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def record(self, judgment: CandidateJudgment) -> None:
        """Count one candidate's judgments and its parsed scores."""
        self.candidates += 1
        self.unscored_candidates += judgment.score is None
        self.judgments += len(judgment.scores)
        for score in judgment.scores:
            if score is None:
                self.parse_failures += 1
            else:
                bucket = math.floor(score + 0.5)  # round half up: 3.5 -> 4, unlike banker's round()
                self.score_histogram[bucket] = self.score_histogram.get(bucket, 0) + 1

    def summary(self) -> dict[str, Any]:
        """JSON-friendly counts (plain keys, histogram keyed by the bucket as a string)."""
        return {
            "candidates": self.candidates,
            "unscored_candidates": self.unscored_candidates,
            "judgments": self.judgments,
            "parse_failures": self.parse_failures,
            "parse_failure_rate": self.parse_failure_rate,
            "score_histogram": {str(k): v for k, v in sorted(self.score_histogram.items())},
            "too_long_prompts": self.too_long_prompts,
            "truncated_responses": self.truncated_responses,
            "max_prompt_tokens": self.max_prompt_tokens,
            "new_tokens": self.new_tokens,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
        }

    def as_dict(self) -> dict[str, float]:
        """Flat metrics for logging (`judge/...` keys, histogram as `judge/score_<bucket>`)."""
        metrics = {
            "judge/candidates": float(self.candidates),
            "judge/unscored_candidates": float(self.unscored_candidates),
            "judge/judgments": float(self.judgments),
            "judge/parse_failures": float(self.parse_failures),
            "judge/parse_failure_rate": math.nan if self.parse_failure_rate is None else self.parse_failure_rate,
            "judge/too_long_prompts": float(self.too_long_prompts),
            "judge/truncated_responses": float(self.truncated_responses),
            "judge/mean_prompt_tokens": self.prompt_tokens / self.candidates if self.candidates else 0.0,
            "judge/max_prompt_tokens": float(self.max_prompt_tokens),
            "judge/new_tokens": float(self.new_tokens),
            "judge/seconds": self.seconds,
            "judge/tokens_per_second": self.tokens_per_second,
        }
        metrics.update({f"judge/score_{k}": float(v) for k, v in sorted(self.score_histogram.items())})
        return metrics


def aggregate_judgments(texts: Sequence[str], template: JudgeTemplate) -> CandidateJudgment:
    """Parse K judgment texts and average the scores that parsed.

    Args:
        texts: the judgments of one candidate.
        template: the judge template (score pattern and range).

    Returns:
        The candidate's judgment; `score` is the mean over parsed scores, None when none parsed.
    """
    scores = [parse_score(text, template) for text in texts]
    parsed = [s for s in scores if s is not None]
    mean = sum(parsed) / len(parsed) if parsed else None
    return CandidateJudgment(score=mean, scores=scores, judgments=list(texts))
