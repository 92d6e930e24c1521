"""Champion and challenger decisions: the metric must beat the champion by the margin, an unhealthy
judge vetoes, an unmeasured metric never promotes, and the fold over stages is the same on every replay."""

import math

import pytest

from pipeline.config import PromotionConfig, RunConfig
from pipeline.promotion import champion_after, decide, decisions, judge_alerts

CFG = PromotionConfig(metric="gt_score", margin=0.02, max_judge_parse_failures=0.25, max_judge_accuracy_drop=0.1)
HEALTHY = {"judge_accuracy": 0.9, "judge_parse_failures": 0.05}


def test_the_first_model_is_the_first_champion():
    assert decide(0, {"gt_score": 0.1}, None, CFG).promoted


@pytest.mark.parametrize(("score", "promoted"), [(0.73, True), (0.72, False), (0.71, False), (0.5, False)])
def test_a_challenger_must_beat_the_champion_by_more_than_the_margin(score, promoted):
    decision = decide(1, {"gt_score": score, **HEALTHY}, (0, {"gt_score": 0.7, **HEALTHY}), CFG)
    assert decision.promoted is promoted
    assert ("beats sft's 0.7000" if promoted else "champion stays sft") in decision.reason


def test_an_unhealthy_judge_vetoes_a_better_policy():
    champion = (0, {"gt_score": 0.5, **HEALTHY})
    unparsed = decide(1, {"gt_score": 0.9, "judge_accuracy": 0.9, "judge_parse_failures": 0.5}, champion, CFG)
    assert not unparsed.promoted and unparsed.reason.startswith("vetoed: judge parse failures 50% > 25%")
    worse = decide(1, {"gt_score": 0.9, "judge_accuracy": 0.75, "judge_parse_failures": 0.0}, champion, CFG)
    assert not worse.promoted and "judge accuracy 0.750 fell 0.150 below 0.900" in worse.reason
    off = PromotionConfig(max_judge_parse_failures=None, max_judge_accuracy_drop=None)
    assert decide(1, {"gt_score": 0.9, "judge_accuracy": 0.1, "judge_parse_failures": 1.0}, champion, off).promoted


def test_an_unmeasured_metric_never_promotes_and_nan_is_unmeasured():
    champion = (0, {"gt_score": 0.5})
    assert not decide(1, {"gt_score": math.nan}, champion, CFG).promoted
    assert "gt_score not measured" in decide(1, {}, champion, CFG).reason
    assert decide(1, {"gt_score": 0.1}, (0, {}), CFG).promoted  # a champion without it loses to one with it


def test_decisions_fold_in_stage_order_and_replay_identically():
    stages = {2: {"gt_score": 0.80, **HEALTHY}, 0: {"gt_score": 0.70, **HEALTHY}, 1: {"gt_score": 0.71, **HEALTHY},
              3: {"gt_score": 0.95, "judge_accuracy": 0.5, "judge_parse_failures": 0.0}}
    decided = decisions(stages, CFG)
    assert [(d.stage, d.promoted) for d in decided] == [(0, True), (1, False), (2, True), (3, False)]
    assert "iter-2" in decided[3].reason  # judged against the champion, not the previous stage
    assert champion_after(stages, CFG) == 2 and decisions(stages, CFG) == decided
    assert champion_after({}, CFG) is None


def test_judge_alerts_without_a_reference_check_only_parse_failures():
    assert judge_alerts({"judge_accuracy": 0.1, "judge_parse_failures": 0.3}, None, CFG) == ["judge parse failures 30% > 25%"]
    assert judge_alerts(HEALTHY, HEALTHY, CFG) == []


def test_the_config_refuses_a_champion_start_that_could_never_change():
    champion = {"start_from": "champion"}
    with pytest.raises(ValueError, match="needs ground truth"):
        RunConfig.model_validate({"data": {"task": None, "ift": "i.jsonl", "seed_prompts": "s.jsonl"},
                                  "promotion": champion})
    with pytest.raises(ValueError, match="needs eval.enabled"):
        RunConfig.model_validate({"eval": {"enabled": False}, "promotion": champion})
    with pytest.raises(ValueError, match="needs promotion.enabled"):
        RunConfig.model_validate({"promotion": {**champion, "enabled": False}})
    with pytest.raises(ValueError, match="promotion.metric"):
        RunConfig.model_validate({"promotion": {"metric": "loss"}})
    assert RunConfig.model_validate({"eval": {"enabled": False}, "promotion": {**champion, "metric": "judge_accuracy"}})
    assert RunConfig.model_validate({"eval": {"enabled": False}})  # latest: promotion only tags "not measured"
