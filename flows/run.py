"""The self-rewarding run as a Prefect flow: seed data, M0, SFT -> M1, then one subflow per iteration.

Python API::

    from flows import self_rewarding_flow
    result = self_rewarding_flow("configs/demo.yaml", output_dir="runs")

Re-running the same run (same run name and config, same output directory) resumes it: finished
steps are read back from their folders, MLflow runs are reopened, nothing is logged twice. Inputs
are checked before anything is written (`pipeline.preflight`), one process at a time may work on a
run directory (`pipeline.runlock`: a second one is refused, a killed one leaves no lock), and a
resume checks that the folder, its input files and the tracking server still describe this run
(`flows.resume`).
"""

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from flows.champion import champion_stage
from flows.iteration import iteration_flow
from flows.launch import CurveTarget
from flows.resume import open_run, with_more_iterations
from flows.stage import finish_stage
from flows.stepdir import StepRecord, model_dir
from flows.summary import VERDICT_FILE, publish_summary
from flows.tasks import step_tasks
from pipeline.config import RunConfig, load_config
from pipeline.data import DATA_FILES
from pipeline.env import apply_env_defaults
from pipeline.models import load_tokenizer, set_torch_threads
from pipeline.preflight import check_inputs, check_prompt_lengths
from pipeline.rundir import check_output_dir, check_run_name
from pipeline.runlock import run_lock
from pipeline.tracking import Tracker, default_tracking_uri


def _flow_run_name() -> str:
    config = flow_run.parameters.get("config")
    return getattr(config, "run_name", None) or "selfreward"


@flow(name="selfreward", flow_run_name=_flow_run_name, log_prints=True)
def self_rewarding_flow(
    config: RunConfig | str | None = None, output_dir: str = "runs", overrides: list[str] | None = None,
    more_iterations: int = 0,
) -> dict[str, Any]:
    """Run (or resume, or continue) a self-rewarding run; returns the per-stage table and the output paths.

    Args:
        config: a validated `RunConfig`, a YAML path, or None for the embedded `configs/demo.yaml`.
        output_dir: holds `<run_name>/` folders, the MLflow store and (from the CLI) the Prefect home.
        overrides: `KEY=VALUE` changes applied to a config read from a path.
        more_iterations: iterations to add to the run once all its saved ones have finished (the
            nightly deployment's 1); an unfinished run is resumed first, a new one runs `iterations`.
            Raising `iterations` in the config continues a run the same way.
    """
    apply_env_defaults()
    if more_iterations < 0:
        raise ValueError(f"more_iterations must be 0 or more, not {more_iterations}")
    if not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    check_inputs(config)
    output = Path(output_dir).resolve()
    check_output_dir(output)
    check_run_name(output, config.run_name)
    with run_lock(output / config.run_name):  # read the run's state only while no one else can change it
        return _run(with_more_iterations(config, output / config.run_name, more_iterations), output)


def _run(config: RunConfig, output: Path) -> dict[str, Any]:
    set_torch_threads(config.runtime.torch_threads)
    tasks, tracking_uri = step_tasks(config.runtime), default_tracking_uri(output)
    tracker = Tracker.from_config(tracking_uri, config.tracking)
    prefect_tags = {"prefect.flow_run_id": str(flow_run.id)}
    run_dir, parent = open_run(config, output, tracker, str(flow_run.id), prefect_tags)
    get_run_logger().info("run %s in %s; MLflow %s", config.run_name, run_dir, tracker.run_url(parent))
    with tracker.failing(parent):
        data = tasks.data(config, run_dir)
        model = tasks.base_model(config, run_dir, data)
        check_data_fits(config, data, model)
        if config.sft.enabled:
            with tracker.stage(parent, config.run_name, "sft", prefect_tags) as run_id:
                tracker.log_params(run_id, config.sft.model_dump(mode="json"))
                model = tasks.sft(config, run_dir, model, data, CurveTarget(tracking_uri, run_id))
                finish_stage(tasks, tracker, config, run_dir, parent, run_id, 0, model, data)
        models = [model]  # M1, M2, ...: earlier judges and anchors come from here
        for iteration in range(1, config.iterations + 1):
            start = _start_model(tracker, config, parent, iteration, len(models))
            # The subflow runs in this process, whose flow-run heartbeat already shows it alive; a
            # second heartbeat thread would hold each iteration up to 1 s at exit (it is joined
            # between 1 s sleeps).
            with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                models.append(iteration_flow(config, iteration, str(run_dir), models[:start + 1], data, parent,
                                             tracking_uri))
        model = models[-1]
    summary = publish_summary(tracker, config, run_dir, parent)
    tracker.finish(parent)
    return {"run_dir": str(run_dir), "rows": summary["rows"], "plot": str(summary["plot"]), "mlflow_run_id": parent,
            "tracking_uri": tracking_uri, "final_model": str(model_dir(model)), "champion": summary["champion"],
            "verdict": str(run_dir / VERDICT_FILE)}


def _start_model(tracker: Tracker, config: RunConfig, parent: str, iteration: int, count: int) -> int:
    """The index into the models so far of the one the next iteration starts from: the latest, or
    (`promotion.start_from: champion`) the champion's. `models[i]` is stage i's model (`models[0]`
    the base model without SFT), so the iteration sees the champion's lineage: earlier judges and
    the previous model for consistency come from before it."""
    if config.promotion.start_from == "champion":
        champion = champion_stage(tracker, config, parent, before=iteration)  # as it was when this iteration began
        if champion is not None:
            return champion
    return count - 1


def check_data_fits(config: RunConfig, data: StepRecord, base: StepRecord) -> None:
    """Exact prompt lengths once the tiny model's tokenizer exists (preflight could only bound them;
    a user's model was counted exactly there already)."""
    if config.model.path is None:
        files = {name: Path(data.path) / file for name, file in DATA_FILES.items() if (Path(data.path) / file).is_file()}
        check_prompt_lengths(config, files, load_tokenizer(model_dir(base)))
