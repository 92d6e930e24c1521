"""Where a stage's promotion decision lands (`pipeline/promotion.py` makes it): a tag with the reason
on the stage run and its model version, the champion's stage on the parent run, and the registry
alias `champion` on the champion's version."""

from prefect import get_run_logger

from pipeline.config import RunConfig
from pipeline.promotion import CHAMPION_ALIAS, TAG_CHAMPION, TAG_PROMOTION, Decision, decisions, judge_alerts
from pipeline.report import stage_name
from pipeline.tracking import ModelRegistry, Tracker, registered_model_name

__all__ = ["champion_stage", "record_promotion"]


def record_promotion(tracker: Tracker, config: RunConfig, parent_run_id: str, run_id: str, index: int) -> Decision | None:
    """Decide stage `index` against the champion before it and record the outcome; None when
    promotion is off. Warns about the stage's judge alerts (against the previous stage) either way."""
    logger, stage = get_run_logger(), stage_name(index)
    metrics = tracker.stage_metrics(parent_run_id)
    previous = max((i for i in metrics if i < index), default=None)
    for alert in judge_alerts(metrics.get(index, {}), metrics.get(previous) if previous is not None else None,
                              config.promotion):
        logger.warning("%s: judge alert: %s", stage, alert)
    if not config.promotion.enabled:
        return None
    # Every recorded stage in order: on a resume, later stages may be recorded already.
    decided = decisions(metrics, config.promotion)
    mine = next(d for d in decided if d.stage == index)
    champion = stage_name([d.stage for d in decided if d.promoted][-1])
    tracker.set_tags(run_id, {TAG_PROMOTION: mine.reason})
    tracker.set_tags(parent_run_id, {TAG_CHAMPION: champion})
    if config.tracking.log_checkpoints:
        registry = ModelRegistry(tracker, registered_model_name(config.run_name, config.tracking.registered_model))
        version, champion_version = registry.alias_version(stage), registry.alias_version(champion)
        if version is not None:
            registry.set_version_tag(version, TAG_PROMOTION, mine.reason)
        if champion_version is not None:
            registry.set_alias(CHAMPION_ALIAS, champion_version)
    (logger.info if mine.promoted else logger.warning)("%s: %s %s (champion: %s)", stage,
                                                      "promoted:" if mine.promoted else "not promoted:", mine.reason,
                                                      champion)
    return mine


def champion_stage(tracker: Tracker, config: RunConfig, parent_run_id: str, before: int | None = None) -> int | None:
    """The champion's stage index among the stages recorded so far, or only those before stage
    `before` (a resumed run has later stages recorded already); None before any."""
    metrics = {i: m for i, m in tracker.stage_metrics(parent_run_id).items() if before is None or i < before}
    decided = [d.stage for d in decisions(metrics, config.promotion) if d.promoted]
    return decided[-1] if decided else None
