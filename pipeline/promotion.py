"""Champion and challenger: which stage's model is the run's best so far.

Each stage's model is a challenger once it is evaluated. It becomes the champion when it beats the
champion's `promotion.metric` by more than `promotion.margin`, unless its judge is unhealthy (a
veto: the model also judges the next iteration, so a better policy with a broken judge is not the
one to build on). The first stage's model is the first champion.

Decisions are a pure function of the parent run's per-stage metrics taken in stage order, so a
resumed run (which records its stages again) reaches the same champion and reasons; nothing about
the champion is state that a crash could leave half-written.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.config import PromotionConfig
from pipeline.report import stage_name

__all__ = ["CHAMPION_ALIAS", "TAG_CHAMPION", "TAG_PROMOTION", "Decision", "champion_after", "decide", "decisions",
           "judge_alerts"]

CHAMPION_ALIAS = "champion"  # the registry alias: `models:/<name>@champion`
TAG_PROMOTION = "selfreward.promotion"  # on a stage run and its model version: the decision's reason
TAG_CHAMPION = "selfreward.champion"  # on the parent run: the champion's stage


@dataclass(frozen=True)
class Decision:
    """What happened to one stage's model: promoted to champion or not, and why (a tag value)."""

    stage: int
    promoted: bool
    reason: str


def _value(metrics: Mapping[str, float] | None, key: str) -> float | None:
    value = (metrics or {}).get(key)
    return None if value is None or math.isnan(value) else float(value)


def judge_alerts(metrics: Mapping[str, float], reference: Mapping[str, float] | None, cfg: PromotionConfig) -> list[str]:
    """What is wrong with a stage's judge, measured on held-out judge examples: too many unparsable
    judgments, or accuracy fallen too far below `reference`'s (the champion's, or the previous stage's)."""
    alerts = []
    failures = _value(metrics, "judge_parse_failures")
    if cfg.max_judge_parse_failures is not None and failures is not None and failures > cfg.max_judge_parse_failures:
        alerts.append(f"judge parse failures {failures:.0%} > {cfg.max_judge_parse_failures:.0%}")
    accuracy, before = _value(metrics, "judge_accuracy"), _value(reference, "judge_accuracy")
    if (cfg.max_judge_accuracy_drop is not None and accuracy is not None and before is not None
            and before - accuracy > cfg.max_judge_accuracy_drop):
        alerts.append(f"judge accuracy {accuracy:.3f} fell {before - accuracy:.3f} below {before:.3f} "
                      f"(> {cfg.max_judge_accuracy_drop})")
    return alerts


def decide(stage: int, challenger: Mapping[str, float], champion: tuple[int, Mapping[str, float]] | None,
           cfg: PromotionConfig) -> Decision:
    """Whether stage `stage`'s model (metrics `challenger`) takes over from `champion` (stage, metrics)."""
    if champion is None:
        return Decision(stage, True, "first model")
    champ_stage, champ_metrics = champion
    name = stage_name(champ_stage)
    alerts = judge_alerts(challenger, champ_metrics, cfg)
    if alerts:
        return Decision(stage, False, f"vetoed: {'; '.join(alerts)}; champion stays {name}")
    new, old = _value(challenger, cfg.metric), _value(champ_metrics, cfg.metric)
    if new is None:
        return Decision(stage, False, f"{cfg.metric} not measured; champion stays {name}")
    if old is None or new > old + cfg.margin:
        was = "n/a" if old is None else f"{old:.4f}"
        return Decision(stage, True, f"{cfg.metric} {new:.4f} beats {name}'s {was} by more than {cfg.margin}")
    return Decision(stage, False, f"{cfg.metric} {new:.4f} does not beat {name}'s {old:.4f} by more than "
                                  f"{cfg.margin}; champion stays {name}")


def decisions(stage_metrics: Mapping[int, Mapping[str, float]], cfg: PromotionConfig) -> list[Decision]:
    """The decision of every recorded stage, in stage order (0 = SFT)."""
    out, champion = [], None
    for stage in sorted(stage_metrics):
        decision = decide(stage, stage_metrics[stage], champion, cfg)
        if decision.promoted:
            champion = (stage, stage_metrics[stage])
        out.append(decision)
    return out


def champion_after(stage_metrics: Mapping[int, Mapping[str, float]], cfg: PromotionConfig) -> int | None:
    """The champion's stage once every recorded stage has been decided (None before any stage)."""
    promoted = [d.stage for d in decisions(stage_metrics, cfg) if d.promoted]
    return promoted[-1] if promoted else None

