"""Ground-truth evaluation metrics (evaluation only, never a training signal)."""

import math
from collections.abc import Iterable, Sequence
from typing import Any

from pipeline.demo_task.rules import RULES, check


def evaluate_responses(prompts: Sequence[str], responses: Sequence[Any]) -> dict[str, float]:
    """Ground-truth metrics of responses to demo instructions.

    Returns:
        gt_score (mean points / 5), gt_success (share meeting every rule), mean_response_length
        (characters), num_responses, and gt_rule_<rule> (share meeting each rule). Means are NaN
        for no responses.

    Raises:
        ValueError: `prompts` and `responses` differ in length.
        InstructionParseError: a prompt is not a demo-task instruction.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    results = [check(p, r) for p, r in zip(prompts, responses)]
    count = len(results)

    def mean(values: Iterable[float]) -> float:
        return sum(values) / count if count else math.nan

    metrics = {
        "gt_score": mean(r.score for r in results),
        "gt_success": mean(float(r.points == r.max_points) for r in results),
        "mean_response_length": mean(len(r) if isinstance(r, str) else 0 for r in responses),
        "num_responses": float(count),
    }
    metrics.update({f"gt_rule_{rule}": mean(float(r.rules[rule]) for r in results) for rule in RULES})
    return metrics


def pairwise_judge_accuracy(
    gt_scores_a: Sequence[float],
    gt_scores_b: Sequence[float],
    judge_scores_a: Sequence[float | None],
    judge_scores_b: Sequence[float | None],
) -> float:
    """How often the judge orders two responses to the same prompt as the checker does.

    Pairs the checker scores equal are left out. A judge tie, or a missing judge score (None: the
    judgment had no parsable score), counts half: the judge did no better than a coin flip there,
    so a judge that always ties scores 0.5, like chance, and can't look good by abstaining.

    Returns:
        Accuracy in [0, 1]; NaN when the checker ties on every pair.

    Raises:
        ValueError: the four sequences differ in length.
    """
    sizes = {len(gt_scores_a), len(gt_scores_b), len(judge_scores_a), len(judge_scores_b)}
    if len(sizes) != 1:
        raise ValueError(f"score sequences differ in length: {sorted(sizes)}")
    credit, pairs = 0.0, 0
    for gt_a, gt_b, judge_a, judge_b in zip(gt_scores_a, gt_scores_b, judge_scores_a, judge_scores_b):
        if gt_a == gt_b:
            continue
        pairs += 1
        if judge_a is None or judge_b is None or judge_a == judge_b:
            credit += 0.5
        elif (judge_a > judge_b) == (gt_a > gt_b):
            credit += 1.0
    return credit / pairs if pairs else math.nan
