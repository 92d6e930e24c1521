"""Judge health: how well a model judges, measured on held-out judge (EFT) examples before it judges.

Each example is a rendered judge prompt and the reference judgment written for it; the model never
trained on them. The model judges every prompt K times with the iteration's sampling settings,
exactly as it judges its own candidates, and four rates describe the result:

- `parse_failure_rate`: judgments with no valid score (the format broke).
- `exact_agreement`: parsed judgments whose score equals the reference judgment's score.
- `pairwise_accuracy`: over every two examples whose reference scores differ, how often the model's
  mean scores order them the same way; a tie or a missing score counts half, so a judge that
  abstains or always ties scores 0.5, like a coin.
- `verdict_agreement` (templates that define verdicts): parsed judgments whose score equals their
  own number of positive verdicts, i.e. the judge's verdict and its final score agree.

A rate of 0 of 0 is None (n/a), never 0.
"""

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from generation import SamplingParams
from judging.aggregate import CandidateJudgment
from judging.judge import judge_rendered
from judging.parse import parse_score
from judging.template import JudgeTemplate

__all__ = ["JudgeGate", "JudgeHealth", "JudgeSelection", "judge_health", "pick_judge", "score_health"]

JudgeSelection = Literal["current", "initial", "best"]


@dataclass(frozen=True)
class JudgeHealth:
    """The four rates (None when undefined) over `examples` held-out examples and their `judgments`."""

    examples: int
    judgments: int
    parse_failure_rate: float | None
    exact_agreement: float | None
    pairwise_accuracy: float | None
    verdict_agreement: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def _pairwise(reference: Sequence[float], judged: Sequence[float | None]) -> float | None:
    credit, pairs = 0.0, 0
    for i in range(len(reference)):
        for j in range(i + 1, len(reference)):
            if reference[i] == reference[j]:
                continue
            pairs += 1
            a, b = judged[i], judged[j]
            if a is None or b is None or a == b:
                credit += 0.5
            elif (a > b) == (reference[i] > reference[j]):
                credit += 1.0
    return _rate(credit, pairs)


def score_health(references: Sequence[str], judged: Sequence[CandidateJudgment], template: JudgeTemplate) -> JudgeHealth:
    """The rates of `judged` (one judgment set per example) against the reference judgments.

    Examples whose reference judgment does not parse with `template` are left out.
    """
    kept = [(parse_score(ref, template), j) for ref, j in zip(references, judged, strict=True)]
    kept = [(ref, j) for ref, j in kept if ref is not None]
    scores = [(s, text) for _, j in kept for s, text in zip(j.scores, j.judgments)]
    parsed = [(s, text) for s, text in scores if s is not None]
    exact = sum(s == ref for ref, j in kept for s in j.scores if s is not None)
    points = [template.points(text) for _, text in parsed]
    with_verdicts = [(s, p) for (s, _), p in zip(parsed, points) if p is not None]
    return JudgeHealth(
        examples=len(kept),
        judgments=len(scores),
        parse_failure_rate=_rate(len(scores) - len(parsed), len(scores)),
        exact_agreement=_rate(exact, len(parsed)),
        pairwise_accuracy=_pairwise([ref for ref, _ in kept], [j.score for _, j in kept]),
        verdict_agreement=_rate(sum(math.isclose(s, p) for s, p in with_verdicts), len(with_verdicts)),
    )


def judge_health(model: Any, tokenizer: Any, examples: Sequence[dict[str, str]], template: JudgeTemplate, *,
                 num_judgments: int, params: SamplingParams) -> tuple[JudgeHealth, list[dict[str, Any]]]:
    """Judge held-out `{"prompt": judge prompt, "response": reference judgment}` examples and rate it.

    Returns:
        The health rates and one sample per example (prompt, reference, judgments, scores).
    """
    judged = judge_rendered(model, tokenizer, [e["prompt"] for e in examples], template=template,
                            num_judgments=num_judgments, params=params)
    samples = [{"prompt": e["prompt"], "reference": e["response"], **j.to_json()} for e, j in zip(examples, judged)]
    return score_health([e["response"] for e in examples], judged, template), samples


@dataclass(frozen=True)
class JudgeGate:
    """When a judge counts as healthy: thresholds on its held-out health (None: not checked)."""

    max_parse_failure_rate: float | None = None
    min_pairwise_accuracy: float | None = None

    def failures(self, health: dict[str, Any] | None) -> list[str]:
        """Why `health` fails the gate (empty when it passes; an unmeasured judge passes)."""
        if not health:
            return []
        why = []
        failures, accuracy = health.get("parse_failure_rate"), health.get("pairwise_accuracy")
        if self.max_parse_failure_rate is not None and failures is not None and failures > self.max_parse_failure_rate:
            why.append(f"parse failures {failures:.1%} > {self.max_parse_failure_rate:.1%}")
        if self.min_pairwise_accuracy is not None and accuracy is not None and accuracy < self.min_pairwise_accuracy:
            why.append(f"pairwise accuracy {accuracy:.3f} < {self.min_pairwise_accuracy:.3f}")
        return why


def pick_judge(healths: Sequence[dict[str, Any] | None], selection: JudgeSelection, gate: JudgeGate,
               fallback: bool) -> tuple[int | None, str]:
    """Which of the stage models M1..M_t (index 0..t-1) judges iteration t, and why.

    `selection`: "current" is M_t (the paper), "initial" is M1 (a frozen judge), "best" the model
    with the highest held-out pairwise accuracy (the latest among equals). When the selected judge
    fails `gate` and `fallback` is set, the latest model that passes it judges instead.

    Returns:
        `(index, reason)`; index None when no model passes the gate (the iteration cannot judge).
    """
    current = len(healths) - 1
    if selection == "initial":
        chosen = 0
    elif selection == "best":
        accuracy = [(h or {}).get("pairwise_accuracy") for h in healths]
        chosen = max(range(len(healths)), key=lambda i: (accuracy[i] if accuracy[i] is not None else -1.0, i))
    else:
        chosen = current
    reason = f"{selection} judge: M{chosen + 1}"
    failing = gate.failures(healths[chosen])
    if not failing:
        return chosen, reason
    if fallback:
        for index in range(current, -1, -1):
            if not gate.failures(healths[index]):
                return index, f"M{chosen + 1} failed the judge gate ({'; '.join(failing)}): fell back to M{index + 1}"
    return None, f"M{chosen + 1} failed the judge gate ({'; '.join(failing)}) and no earlier judge passes it"
