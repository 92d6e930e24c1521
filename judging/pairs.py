"""Choosing one (chosen, rejected) pair per prompt from its judged candidates.

Strategies live in `PAIR_STRATEGIES`:

- `max_min` (Yuan et al. 2024): highest mean score vs lowest; among equal scores the first index
  wins, so the choice is reproducible.
- `length_control` (Meta-Rewarding, Wu et al. 2024, arXiv 2407.19594, section 2.1): with
  `S_max`/`S_min` the extreme scores, the top tier is `[(1-rho) S_max + rho S_min, S_max]` and the
  bottom tier `[S_min, (1-rho) S_min + rho S_max]`; chosen is the SHORTEST response in the top tier,
  rejected the LONGEST in the bottom tier. `rho = 0` keeps only the extreme scores (and still
  prefers short chosen / long rejected among them); larger `rho` trades score margin for a
  stronger push against length.
- `random` (a control, not a training method): two distinct scored candidates drawn with the
  caller's `rng`, in random order, whatever their scores. It skips exactly the prompts `max_min`
  skips (too few scored, tie), so a control run trains on the same number of pairs with the judge's
  ordering removed: what it gains over SFT is what DPO on unranked self-samples gives by itself.

`select_anchored` (Temporal Self-Rewarding, arXiv 2508.06026, "anchored rejection"): when an earlier
model also answered the prompt, the rejected response is its worst-scored answer, as long as that
scores below the best candidate; chosen and rejected then stay apart even when the current model's
own samples have converged (and tie).

A prompt is skipped, never aborting its batch (a `break` would drop every later prompt), when fewer than two
candidates have a score, when best and worst tie, or when a score-ordered strategy's chosen does
not score strictly above its rejected (possible once the tiers overlap, `rho > 0.5`). `select_pair` returns a
falsy `PairSkip` naming the reason, and `PairStats` counts it.
"""

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

__all__ = [
    "PAIR_STRATEGIES",
    "PairChoice",
    "PairSelectionError",
    "PairSkip",
    "PairStats",
    "PairStrategy",
    "SkipReason",
    "select_anchored",
    "select_pair",
]

PairStrategy = Literal["max_min", "length_control", "random"]
# Selection reasons come from select_pair; the writer adds the ones about token sequences.
SkipReason = Literal[
    "too_few_scored", "tie", "no_margin", "too_long", "prompt_too_long", "identical", "empty_response"
]


class PairSelectionError(ValueError):
    """Invalid arguments to `select_pair` (unknown strategy, rho out of range, length mismatch, no rng)."""


@dataclass(frozen=True)
class PairChoice:
    """The selected pair: candidate indices, their scores and their lengths (tokens)."""

    chosen: int
    rejected: int
    chosen_score: float
    rejected_score: float
    chosen_length: int
    rejected_length: int
    anchored: bool = False  # `rejected` indexes the anchor responses, not the candidates


@dataclass(frozen=True)
class PairSkip:
    """No pair for this prompt. Falsy, so `if not result:` reads as "skipped"."""

    reason: SkipReason

    def __bool__(self) -> bool:
        return False


class _Scored(NamedTuple):
    index: int
    score: float
    length: int


def _max_min(
    scored: list[_Scored], s_max: float, s_min: float, rho: float, rng: random.Random | None
) -> tuple[_Scored, _Scored]:
    # rho and rng are unused: the paper's rule takes the extremes; first index among equal scores.
    chosen = next(c for c in scored if c.score == s_max)
    rejected = next(c for c in scored if c.score == s_min)
    return chosen, rejected


def _length_control(
    scored: list[_Scored], s_max: float, s_min: float, rho: float, rng: random.Random | None
) -> tuple[_Scored, _Scored] | PairSkip:
    # A tiny tolerance so that float rounding in the tier bounds never drops a boundary score.
    eps = 1e-9 * max(1.0, abs(s_max), abs(s_min))
    top_floor = (1 - rho) * s_max + rho * s_min
    bottom_ceiling = (1 - rho) * s_min + rho * s_max
    top = [c for c in scored if c.score >= top_floor - eps]
    bottom = [c for c in scored if c.score <= bottom_ceiling + eps]
    # Ties: shortest chosen, then higher score, then first index; longest rejected, then lower score.
    chosen = min(top, key=lambda c: (c.length, -c.score, c.index))
    rejected = min(bottom, key=lambda c: (-c.length, c.score, c.index))
    if not chosen.score > rejected.score:
        return PairSkip("no_margin")
    return chosen, rejected


def _random(
    scored: list[_Scored], s_max: float, s_min: float, rho: float, rng: random.Random | None
) -> tuple[_Scored, _Scored]:
    # `sample` draws two distinct candidates in random order: the scores decide nothing here.
    chosen, rejected = rng.sample(scored, 2)
    return chosen, rejected


_StrategyFn = Callable[[list[_Scored], float, float, float, random.Random | None], tuple[_Scored, _Scored] | PairSkip]
PAIR_STRATEGIES: dict[str, _StrategyFn] = {
    "max_min": _max_min,
    "length_control": _length_control,
    "random": _random,
}
# Strategies that draw from the caller's generator (so the caller controls reproducibility).
_NEEDS_RNG = frozenset({"random"})


def select_pair(
    scores: Sequence[float | None],
    lengths: Sequence[int],
    strategy: PairStrategy = "max_min",
    rho: float = 0.0,
    rng: random.Random | None = None,
) -> PairChoice | PairSkip:
    """Pick the (chosen, rejected) candidates of one prompt.

    Args:
        scores: one score per candidate; None (or NaN) means unscored and is ignored.
        lengths: one length per candidate (response tokens), used by `length_control` and stats.
        strategy: a key of `PAIR_STRATEGIES`.
        rho: tier width for `length_control`, in [0, 1]; ignored by the others.
        rng: the generator `random` draws from; one per dataset, shared by its prompts, so a seed
            reproduces the whole dataset. Ignored by the score-ordered strategies.

    Returns:
        A `PairChoice`, or a falsy `PairSkip` with reason "too_few_scored", "tie" or "no_margin".
        With `random`, `chosen_score` may be below `rejected_score`.

    Raises:
        PairSelectionError: unknown strategy, rho outside [0, 1], scores/lengths of different
            lengths, or `random` without an `rng`.
    """
    if strategy not in PAIR_STRATEGIES:
        raise PairSelectionError(f"pair strategy {strategy!r} is unknown; expected one of {sorted(PAIR_STRATEGIES)}")
    if strategy in _NEEDS_RNG and not isinstance(rng, random.Random):
        raise PairSelectionError(f"pair strategy {strategy!r} needs rng=random.Random(seed), got {rng!r}")
    if not (isinstance(rho, int | float) and 0.0 <= rho <= 1.0):
        raise PairSelectionError(f"rho must be a number in [0, 1], got {rho!r}")
    if len(scores) != len(lengths):
        raise PairSelectionError(f"got {len(scores)} scores but {len(lengths)} lengths; expected one of each per candidate")
    scored = [
        _Scored(i, float(s), int(n))
        for i, (s, n) in enumerate(zip(scores, lengths))
        if s is not None and math.isfinite(s)
    ]
    if len(scored) < 2:
        return PairSkip("too_few_scored")
    s_max = max(c.score for c in scored)
    s_min = min(c.score for c in scored)
    if s_max == s_min:
        return PairSkip("tie")
    picked = PAIR_STRATEGIES[strategy](scored, s_max, s_min, float(rho), rng)
    if isinstance(picked, PairSkip):
        return picked
    chosen, rejected = picked
    return PairChoice(chosen.index, rejected.index, chosen.score, rejected.score, chosen.length, rejected.length)


def select_anchored(
    scores: Sequence[float | None],
    lengths: Sequence[int],
    anchor_scores: Sequence[float | None],
    anchor_lengths: Sequence[int],
) -> PairChoice | None:
    """Best-scored candidate vs worst-scored anchor response, when the anchor scores strictly lower.

    Ties pick the first index, as `max_min` does. Returns None when no candidate or no anchor has a
    score, or no anchor scores below the best candidate (the caller then pairs the candidates alone).
    """
    scored = [(s, i) for i, s in enumerate(scores) if s is not None and math.isfinite(s)]
    anchored = [(s, i) for i, s in enumerate(anchor_scores) if s is not None and math.isfinite(s)]
    if not scored or not anchored:
        return None
    best = max(scored, key=lambda c: (c[0], -c[1]))
    worst = min(anchored, key=lambda c: (c[0], c[1]))
    if not worst[0] < best[0]:
        return None
    return PairChoice(best[1], worst[1], float(best[0]), float(worst[0]), int(lengths[best[1]]),
                      int(anchor_lengths[worst[1]]), anchored=True)


@dataclass
class PairStats:
    """Running counts over prompts: pairs kept, skips by reason, and the kept pairs' means.

    `record` is called once per prompt with what happened to it (a written `PairChoice` or a
    `PairSkip`, including the writer's skips), so `pairs + sum(skipped.values()) == prompts`.
    """

    prompts: int = 0
    pairs: int = 0
    anchored: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    chosen_score_sum: float = 0.0
    rejected_score_sum: float = 0.0
    chosen_length_sum: int = 0
    rejected_length_sum: int = 0

    def record(self, result: PairChoice | PairSkip) -> None:
        """Count one prompt's outcome."""
        self.prompts += 1
        if isinstance(result, PairSkip):
            self.skipped[result.reason] = self.skipped.get(result.reason, 0) + 1
            return
        self.pairs += 1
        self.anchored += result.anchored
        self.chosen_score_sum += result.chosen_score
        self.rejected_score_sum += result.rejected_score
        self.chosen_length_sum += result.chosen_length
        self.rejected_length_sum += result.rejected_length

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def skip_rate(self) -> float | None:
        """Skipped prompts / prompts; None (n/a) when there were no prompts."""
        return self.num_skipped / self.prompts if self.prompts else None

    def _mean(self, total: float) -> float:
        return total / self.pairs if self.pairs else float("nan")

    @property
    def mean_chosen_score(self) -> float:
        return self._mean(self.chosen_score_sum)

    @property
    def mean_rejected_score(self) -> float:
        return self._mean(self.rejected_score_sum)

    @property
    def mean_chosen_length(self) -> float:
        return self._mean(self.chosen_length_sum)

    @property
    def mean_rejected_length(self) -> float:
        return self._mean(self.rejected_length_sum)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly counts with plain keys (means are None when no pair was kept)."""
        def mean(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {
            "prompts": self.prompts,
            "pairs": self.pairs,
            "anchored_pairs": self.anchored,
            "skipped": dict(sorted(self.skipped.items())),
            "skip_rate": self.skip_rate,
            "mean_chosen_score": mean(self.mean_chosen_score),
            "mean_rejected_score": mean(self.mean_rejected_score),
            "mean_chosen_length": mean(self.mean_chosen_length),
            "mean_rejected_length": mean(self.mean_rejected_length),
        }

    def as_dict(self) -> dict[str, float]:
        """Flat metrics for logging (`pairs/...` keys; means are NaN when no pair was kept)."""
        metrics = {
            "pairs/prompts": float(self.prompts),
            "pairs/pairs": float(self.pairs),
            "pairs/skipped": float(self.num_skipped),
            "pairs/skip_rate": math.nan if self.skip_rate is None else self.skip_rate,
            "pairs/chosen_score": self.mean_chosen_score,
            "pairs/rejected_score": self.mean_rejected_score,
            "pairs/chosen_length": self.mean_chosen_length,
            "pairs/rejected_length": self.mean_rejected_length,
        }
        metrics.update({f"pairs/skipped_{reason}": float(n) for reason, n in sorted(self.skipped.items())})
        return metrics
