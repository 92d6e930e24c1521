"""Consistency of two judges' rankings (CREAM, Wang et al. 2024, arXiv 2410.12735).

The previous iteration's judge re-scores the candidates the current judge scored. For each prompt,
Kendall's tau-b between the two score vectors measures how much the rankings agree, and the run's
consistency rate is C = mean over prompts of (tau + 1) / 2. CREAM trains the round with the
label-smoothed DPO loss C * L(y_w, y_l) + (1 - C) * L(y_l, y_w), i.e. cDPO with epsilon = 1 - C: pairs
the two judges disagree on pull less.
"""

import math
from collections.abc import Iterable, Sequence
from itertools import combinations, islice
from typing import Any

from judging.aggregate import JudgingStats
from judging.judgments import Judge, JudgedPrompt

__all__ = ["consistency_rate", "kendall_tau", "measure_consistency"]


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall's tau-b of two score vectors (ties allowed); None when either has no two distinct values.

    tau_b = (concordant - discordant) / sqrt((n0 - ties_a) * (n0 - ties_b)) over all pairs of items,
    n0 the number of pairs, ties_x the pairs tied in x.
    """
    if len(a) != len(b):
        raise ValueError(f"kendall_tau needs two vectors of one length, got {len(a)} and {len(b)}")
    concordant = discordant = ties_a = ties_b = pairs = 0
    for i, j in combinations(range(len(a)), 2):
        pairs += 1
        da, db = a[i] - a[j], b[i] - b[j]
        ties_a += da == 0
        ties_b += db == 0
        if da * db > 0:
            concordant += 1
        elif da * db < 0:
            discordant += 1
    denominator = math.sqrt((pairs - ties_a) * (pairs - ties_b))
    return (concordant - discordant) / denominator if denominator else None


def consistency_rate(current: Sequence[Sequence[float | None]], previous: Sequence[Sequence[float | None]]) -> tuple[float | None, int]:
    """C = mean of (tau_b + 1) / 2 over prompts whose candidates both judges scored and ranked.

    Returns:
        `(C or None when no prompt qualifies, prompts counted)`.
    """
    rates = []
    for now, before in zip(current, previous, strict=True):
        both = [(x, y) for x, y in zip(now, before, strict=True) if x is not None and y is not None]
        tau = kendall_tau([x for x, _ in both], [y for _, y in both]) if len(both) > 1 else None
        if tau is not None:
            rates.append((tau + 1) / 2)
    return (sum(rates) / len(rates) if rates else None), len(rates)


def measure_consistency(previous_judge: Judge, judged: Iterable[JudgedPrompt], max_prompts: int,
                        max_smoothing: float = 0.49) -> dict[str, Any]:
    """Re-judge the first `max_prompts` prompts' candidates with `previous_judge` and compare rankings.

    Returns:
        `consistency_rate` (None when undefined), `prompts` counted, and `label_smoothing` for the
        round: 1 - C capped at `max_smoothing` (0 when C is undefined: nothing to regularise with).
    """
    rows = list(islice(judged, max_prompts))
    stats = JudgingStats()
    before = previous_judge([r.prompt for r in rows], [[c.text for c in r.candidates] for r in rows], 0, stats)
    rate, counted = consistency_rate([[j.score for j in r.judgments] for r in rows],
                                     [[j.score for j in b] for b in before])
    smoothing = 0.0 if rate is None else min(max_smoothing, 1.0 - rate)
    return {"consistency_rate": rate, "prompts": counted, "label_smoothing": smoothing,
            "previous_parse_failure_rate": stats.parse_failure_rate}
