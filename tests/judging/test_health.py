"""Judge health rates against hand-worked values, and which judge an iteration picks."""

import pytest

from judging import CandidateJudgment, JudgeGate, JudgeTemplate, judge_health, pick_judge, score_health

RULES = JudgeTemplate("rules", "{prompt} {response}", r"Score:\s*(\d+)", 0, 5, verdict_pattern=r"\b(yes|no)\b",
                      positive_verdict="yes", negative_verdict="no")


def judged(*texts: str) -> CandidateJudgment:
    from judging import aggregate_judgments

    return aggregate_judgments(list(texts), RULES)


def test_rates_worked_out_by_hand():
    references = ["yes yes no. Score: 2", "yes yes yes. Score: 3", "no no no. Score: 0", "Score: 9"]
    judgments = [
        judged("yes yes no. Score: 2", "yes no no. Score: 2"),  # both parse; exact 2 of 2; verdicts 1 of 2
        judged("yes yes yes. Score: 3", "loops forever"),      # 1 parse failure; exact 1; verdicts 1
        judged("no no no. Score: 1", "no no no. Score: 0"),    # exact 1 of 2; verdicts 1 of 2
        judged("Score: 4", "Score: 4"),                         # reference out of range: left out
    ]
    health = score_health(references, judgments, RULES)
    assert health.examples == 3 and health.judgments == 6
    assert health.parse_failure_rate == pytest.approx(1 / 6)
    assert health.exact_agreement == pytest.approx(4 / 5)
    assert health.verdict_agreement == pytest.approx(3 / 5)
    # mean scores 2, 3, 0.5 against references 2, 3, 0: all three pairs ordered right
    assert health.pairwise_accuracy == pytest.approx(1.0)


def test_ties_and_missing_scores_count_half_and_zero_of_zero_is_none():
    health = score_health(["Score: 1", "Score: 4"], [judged("Score: 3"), judged("nothing")], RULES)
    assert health.pairwise_accuracy == 0.5 and health.parse_failure_rate == 0.5
    assert health.verdict_agreement is None  # no judgment wrote verdicts
    empty = score_health([], [], RULES)
    assert empty.parse_failure_rate is None and empty.pairwise_accuracy is None


def test_the_model_judges_each_example_k_times(tiny):
    from generation import SamplingParams
    from judging import load_template

    examples = [{"prompt": "rate: the cat sat", "response": "Score: 3"}, {"prompt": "rate: a dog", "response": "Score: 1"}]
    health, samples = judge_health(tiny.model, tiny.tokenizer, examples, load_template(), num_judgments=2,
                                   params=SamplingParams(max_new_tokens=4, temperature=1.0, seed=1))
    assert health.judgments == 4 and len(samples) == 2 and all(len(s["judgments"]) == 2 for s in samples)
    assert health.parse_failure_rate is not None


HEALTHY = {"parse_failure_rate": 0.01, "pairwise_accuracy": 0.9}
BROKEN = {"parse_failure_rate": 0.4, "pairwise_accuracy": 0.6}


def test_selection_gate_and_fallback():
    gate = JudgeGate(max_parse_failure_rate=0.05, min_pairwise_accuracy=0.8)
    healths = [HEALTHY, {"parse_failure_rate": 0.0, "pairwise_accuracy": 0.95}, BROKEN]
    assert pick_judge(healths, "current", JudgeGate(), fallback=False) == (2, "current judge: M3")
    assert pick_judge(healths, "initial", gate, fallback=False)[0] == 0
    assert pick_judge(healths, "best", gate, fallback=False)[0] == 1
    index, reason = pick_judge(healths, "current", gate, fallback=True)
    assert index == 1 and "parse failures 40.0% > 5.0%" in reason and "fell back to M2" in reason
    index, reason = pick_judge(healths, "current", gate, fallback=False)
    assert index is None and "no earlier judge passes" in reason
    assert pick_judge([BROKEN, BROKEN], "current", gate, fallback=True)[0] is None
    assert pick_judge([None, {}], "current", gate, fallback=False)[0] == 1  # unmeasured judges pass
