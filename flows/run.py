"""The self-rewarding run as a Prefect flow: seed data, M0, SFT -> M1, then one subflow per iteration.

Python API::

    from flows import self_rewarding_flow
    result = self_rewarding_flow("configs/demo.yaml", output_dir="runs")

Re-running the same run (same run name and config, same output directory) resumes it: finished
steps are read back from their folders, MLflow runs are reopened, nothing is logged twice. Inputs
are checked before anything is written (`pipeline.preflight`), and one process at a time may work
on a run directory (`pipeline.runlock`: a second one is refused, a killed one leaves no lock).
"""

from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from dpo import write_text_atomic
from flows.iteration import iteration_flow
from flows.launch import CurveTarget
from flows.stage import finish_stage
from flows.stepdir import model_dir
from flows.tasks import step_tasks
from pipeline.config import ConfigError, RunConfig, load_config
from pipeline.env import apply_env_defaults
from pipeline.models import set_torch_threads
from pipeline.preflight import check_inputs
from pipeline.report import comparison_rows, format_table, plot_comparison, write_json
from pipeline.runlock import run_lock
from pipeline.tracking import Tracker, default_tracking_uri, flatten


def _flow_run_name() -> str:
    config = flow_run.parameters.get("config")
    return getattr(config, "run_name", None) or "selfreward"


@flow(name="selfreward", flow_run_name=_flow_run_name, log_prints=True)
def self_rewarding_flow(
    config: RunConfig | str | None = None, output_dir: str = "runs", overrides: list[str] | None = None
) -> dict[str, Any]:
    """Run (or resume) a self-rewarding run; returns the per-stage table and the output paths.

    Args:
        config: a validated `RunConfig`, a YAML path, or None for the embedded `configs/demo.yaml`.
        output_dir: holds `<run_name>/` folders, the MLflow store and (from the CLI) the Prefect home.
        overrides: `KEY=VALUE` changes applied to a config read from a path.
    """
    apply_env_defaults()
    if not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    check_inputs(config)
    output = Path(output_dir).resolve()
    with run_lock(output / config.run_name):
        return _run(config, output)


def _run(config: RunConfig, output: Path) -> dict[str, Any]:
    set_torch_threads(config.runtime.torch_threads)
    tasks, run_dir, tracking_uri = step_tasks(config.runtime), prepare_run_dir(output, config), default_tracking_uri(output)
    tracker = Tracker.from_config(tracking_uri, config.tracking, artifact_root=output / "mlartifacts")
    prefect_tags = {"prefect.flow_run_id": str(flow_run.id)}
    parent = tracker.start_pipeline(config.run_name, config.model_dump(mode="json"), config.fingerprint(), prefect_tags)
    get_run_logger().info("run %s in %s; MLflow %s", config.run_name, run_dir, tracker.run_url(parent))
    with tracker.failing(parent):
        data = tasks.data(config, run_dir)
        model = tasks.base_model(config, run_dir, data)
        if config.sft.enabled:
            with tracker.stage(parent, config.run_name, "sft", prefect_tags) as run_id:
                tracker.log_params(run_id, config.sft.model_dump(mode="json"))
                model = tasks.sft(config, run_dir, model, data, CurveTarget(tracking_uri, run_id))
                finish_stage(tasks, tracker, config, run_dir, parent, run_id, 0, model, data)
        models = [model]  # M1, M2, ...: earlier judges and anchors come from here
        for iteration in range(1, config.iterations + 1):
            # The subflow runs in this process, whose flow-run heartbeat already shows it alive; a
            # second heartbeat thread would hold each iteration up to 1 s at exit (it is joined
            # between 1 s sleeps).
            with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                models.append(iteration_flow(config, iteration, str(run_dir), models, data, parent, tracking_uri))
        model = models[-1]
    rows = comparison_rows(tracker.stage_metrics(parent))
    plot = plot_comparison(rows, run_dir / "plots" / "stages.png")
    tracker.log_artifact(parent, plot, "plots")
    tracker.log_artifact(parent, write_json(run_dir / "stages.json", rows), "summary")
    tracker.finish(parent)
    get_run_logger().info("stages of %s:\n%s\nplot: %s", config.run_name, format_table(rows), plot)
    return {"run_dir": str(run_dir), "rows": rows, "plot": str(plot), "mlflow_run_id": parent,
            "tracking_uri": tracking_uri, "final_model": str(model_dir(model))}


def prepare_run_dir(output: Path, config: RunConfig) -> Path:
    """`<output>/<run_name>/` with the resolved config; refuses a different config under the same name."""
    run_dir = output / config.run_name
    saved = run_dir / "config.yaml"
    resolved = config.model_dump(mode="json")
    if saved.is_file():
        previous = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
        try:  # fields added since the run started count as their defaults, not as changes
            previous = RunConfig.model_validate(previous).model_dump(mode="json")
        except ValueError:
            pass  # a field that no longer exists: compared as saved, so it is named below
        changed = _changed_fields(flatten(previous), flatten(resolved))
        if changed:
            raise ConfigError(
                f"run '{config.run_name}' in {output} was started with a different config "
                f"(changed: {', '.join(changed[:8])}); resume it with the same config, or start a new run "
                f"with --set run_name=<new name>"
            )
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(saved, yaml.safe_dump(resolved, sort_keys=False))
    return run_dir


def _changed_fields(old: dict[str, str], new: dict[str, str]) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
