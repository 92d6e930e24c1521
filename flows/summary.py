"""What a finished run leaves on its MLflow parent run and its Prefect flow run: the per-stage table
(`stages.json`), the stage plot (`stages.png`, judge health included) and the verdict
(`pipeline/verdict.py`: every stage against the previous one and M1, regressions and judge alerts
marked) as a markdown file in MLflow and as the flow run's markdown artifact, linked to MLflow."""

from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from dpo import write_text_atomic
from pipeline.config import RunConfig
from pipeline.promotion import decisions
from pipeline.report import (
    artifact_key,
    comparison_rows,
    format_table,
    plot_comparison,
    stage_name,
    write_json,
)
from pipeline.tracking import Tracker
from pipeline.verdict import verdict_markdown

__all__ = ["STAGES_FILE", "VERDICT_FILE", "publish_summary"]

STAGES_FILE = "stages.json"  # written once every iteration of the run has finished
VERDICT_FILE = "verdict.md"


def publish_summary(tracker: Tracker, config: RunConfig, run_dir: Path, parent: str) -> dict[str, Any]:
    """Write and log the run's table, plot and verdict; returns rows, plot path and champion stage."""
    metrics = tracker.stage_metrics(parent)
    rows = comparison_rows(metrics)
    decided = decisions(metrics, config.promotion) if config.promotion.enabled else []
    promoted = [d.stage for d in decided if d.promoted]
    plot = plot_comparison(rows, run_dir / "plots" / "stages.png")
    tracker.log_artifact(parent, plot, "plots")
    links = {stage: tracker.run_url(run_id) for stage, run_id in tracker.stage_runs(config.run_name).items()}
    verdict = verdict_markdown(config.run_name, rows, decided, config.promotion, links)
    write_text_atomic(run_dir / VERDICT_FILE, verdict)
    tracker.log_artifact(parent, run_dir / VERDICT_FILE, "summary")
    # Last: its presence says every iteration finished (`flows.resume.with_more_iterations`).
    tracker.log_artifact(parent, write_json(run_dir / STAGES_FILE, rows), "summary")
    create_markdown_artifact(f"{verdict}\nMLflow parent run: {tracker.run_url(parent)}\n",
                             key=artifact_key(config.run_name, "verdict"), description=f"{config.run_name}: verdict")
    get_run_logger().info("stages of %s:\n%s\nplot: %s", config.run_name, format_table(rows), plot)
    return {"rows": rows, "plot": plot, "champion": stage_name(promoted[-1]) if promoted else None}
