"""Direct links into the MLflow UI for one run, so a person lands on the answer, not on a list:
the parent's model metrics (each summary metric against the stage), the compare view of the stage
runs, the verdict artifact, the newest stage run's curves and the champion's model version. Routes are those of MLflow 3's UI."""

import json
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

__all__ = ["run_links", "ui_links"]


def ui_links(base: str, experiment_id: str, parent_run_id: str, stage_run_ids: Mapping[str, str],
             model_name: str | None = None, champion_version: str | None = None) -> dict[str, str]:
    """{what: URL} under the UI at `base` (e.g. http://127.0.0.1:5000)."""
    run = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{parent_run_id}"
    ordered = [stage_run_ids[s] for s in sorted(stage_run_ids, key=_stage_order)]
    # The compare page reads JSON lists from its query string.
    compare = (f"{base.rstrip('/')}/#/compare-runs?runs={quote(json.dumps(ordered, separators=(',', ':')))}"
               f"&experiments={quote(json.dumps([experiment_id]))}")
    links = {"model metrics": f"{run}/model-metrics", "compare stages": compare,
             "verdict": f"{run}/artifactPath/summary/verdict.md"}
    if ordered:  # the newest stage's training curves
        links["latest stage"] = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{ordered[-1]}/model-metrics"
    if model_name and champion_version:
        links["champion model"] = f"{base.rstrip('/')}/#/models/{quote(model_name)}/versions/{champion_version}"
    return links


def _stage_order(stage: str) -> int:
    return 0 if stage == "sft" else int(stage.removeprefix("iter-"))


def run_links(db: Path, experiment: str, run_name: str | None, base: str) -> dict[str, str]:
    """`ui_links` of `run_name` (default: the most recent run) in the sqlite store `db`; {} without such a run."""
    from pipeline.promotion import CHAMPION_ALIAS
    from pipeline.tracking import ModelRegistry, Tracker, registered_model_name

    tracker = Tracker(f"sqlite:///{db}", experiment, retries=0)
    run_name = run_name or tracker.latest_pipeline_name()
    parent = tracker.find_pipeline(run_name) if run_name else None
    if parent is None:
        return {}
    registered = tracker.client.get_run(parent).data.params.get("tracking.registered_model")  # None is "None"
    name = registered_model_name(run_name, None if registered in (None, "None") else registered)
    champion = ModelRegistry(tracker, name).alias_version(CHAMPION_ALIAS)
    return ui_links(base, tracker.experiment_id, parent, tracker.stage_runs(run_name), name, champion)
