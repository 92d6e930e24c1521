"""`selfreward`: run a self-rewarding pipeline, compare its stages, open the MLflow UI.

    selfreward run [CONFIG] [--output DIR] [--set KEY=VALUE ...] [--more-iterations N]
    selfreward compare [RUN_NAME] [--output DIR] [--json]
    selfreward ui [--output DIR] [--port PORT] [--run RUN_NAME]

A mistake in the input (config, data, model directory, judge template, `--output`) or a run directory
that another run holds prints one clear message and exits with code 2; nothing is written. So does a
resume whose input files changed under a trained stage, or whose run name belongs to another run on
the tracking server. A run that fails for another known reason (MLflow unreachable, disk full,
non-finite loss) prints its message and exits with code 1; running the same command again resumes
it. Prefect logs these known errors in one line each, without their tracebacks: the message printed
last is the whole story.
"""

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.config import ConfigError, load_config
from pipeline.env import apply_env_defaults

EXIT_USAGE = 2
EXIT_FAILED = 1


def _user_errors() -> tuple[type[Exception], ...]:
    """Exception types that mean 'bad input', each defined by the package that checks it."""
    from dpo import PreferenceDataError
    from generation import EngineUnavailableError, PromptFileError
    from judging import RewardFunctionError, TemplateError
    from pipeline.inputs import InputChangedError
    from pipeline.models import ModelLoadError
    from pipeline.rundir import RunDirError
    from pipeline.runlock import RunLockedError
    from pipeline.tracking import RunIdentityError

    return (ConfigError, PreferenceDataError, PromptFileError, RewardFunctionError, TemplateError, ModelLoadError,
            RunLockedError, EngineUnavailableError, RunDirError, RunIdentityError, InputChangedError)


def _run_failures() -> tuple[type[Exception], ...]:
    """Failures that carry a complete message: printed without a traceback, exit code 1."""
    from dpo import NonFiniteLossError
    from flows.outcomes import DegenerateIterationError
    from flows.stepdir import DiskFullError
    from pipeline.tracking import TrackingUnavailableError

    return NonFiniteLossError, DiskFullError, TrackingUnavailableError, DegenerateIterationError


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"selfreward: error: {message}", file=sys.stderr)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)  # fails fast, before the heavy imports (torch, mlflow)
    from pipeline.preflight import check_inputs
    from pipeline.rundir import check_output_dir, check_run_name, check_saved_config
    from pipeline.runlock import run_lock

    check_inputs(config)  # data files, judge templates, reward functions, model directory
    output = Path(args.output).resolve()
    check_output_dir(output)
    check_run_name(output, config.run_name)
    check_saved_config(output / config.run_name, config)  # a changed config on resume: refused before Prefect starts
    with run_lock(output / config.run_name):  # before Prefect starts: a second run is refused at once
        return _run(config, output, args.more_iterations)


class _KnownErrorTracebacks(logging.Filter):
    """Drop the traceback from a log record about an error whose message says everything (the
    errors `main` prints itself); the record's one-line message stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and isinstance(error, _user_errors() + _run_failures()):
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_known_errors() -> None:
    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.engine"):
        known = logging.getLogger(name)
        if not any(isinstance(f, _KnownErrorTracebacks) for f in known.filters):
            known.addFilter(_KnownErrorTracebacks())
    # The Tracker logs one line per failed attempt; urllib3 would add one per internal HTTP retry.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def _run(config, output: Path, more_iterations: int = 0) -> int:
    if "PREFECT_API_URL" not in os.environ:
        # Ephemeral Prefect keeps its database with the run, so `selfreward ui` can show it later.
        os.environ.setdefault("PREFECT_HOME", str(output / "prefect"))
        Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    from flows import self_rewarding_flow
    from pipeline.report import format_table

    _quiet_known_errors()
    result = self_rewarding_flow(config, output_dir=str(output), more_iterations=more_iterations)
    print(f"\n{format_table(result['rows'])}\n")
    print(f"run folder: {result['run_dir']}")
    print(f"stage plot: {result['plot']}")
    print(f"MLflow UI:  selfreward ui --output {output}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pipeline.artifact_store import default_tracking_uri  # MLflow-free: checked before MLflow loads

    output = Path(args.output).resolve()
    tracking_uri = default_tracking_uri(output)
    if tracking_uri.startswith("sqlite") and not (output / "mlflow.db").is_file():
        return _fail(f"no MLflow store in {output} (expected {output / 'mlflow.db'}); run `selfreward run` first")
    from pipeline.promotion import CHAMPION_ALIAS, TAG_CHAMPION, TAG_PROMOTION
    from pipeline.report import comparison_rows, format_table, jsonable, plot_comparison
    from pipeline.tracking import Tracker, registered_model_name

    tracker = Tracker(tracking_uri, args.experiment)
    run_name = args.run_name or tracker.latest_pipeline_name()
    parent = tracker.find_pipeline(run_name) if run_name else None
    if parent is None:
        return _fail(f"no run named {run_name!r} in experiment {args.experiment!r} at {tracking_uri}")
    rows = comparison_rows(tracker.stage_metrics(parent))
    parent_run = tracker.client.get_run(parent)
    champion = parent_run.data.tags.get(TAG_CHAMPION)
    stage_tags = {stage: tracker.client.get_run(run_id).data.tags for stage, run_id in tracker.stage_runs(run_name).items()}
    for row in rows:  # the champion and why each stage was (not) promoted
        row["champion"] = row["stage"] == champion
        if TAG_PROMOTION in stage_tags.get(row["stage"], {}):
            row["promotion"] = stage_tags[row["stage"]][TAG_PROMOTION]
    plot = plot_comparison(rows, output / run_name / "plots" / "compare.png")
    if args.json:
        print(json.dumps(jsonable(rows), indent=2))
    else:
        print(format_table(rows))
        if champion:
            registered = parent_run.data.params.get("tracking.registered_model")  # None is logged as "None"
            name = registered_model_name(run_name, None if registered in (None, "None") else registered)
            print(f"champion: {champion} (models:/{name}@{CHAMPION_ALIAS})")
        for row in rows:
            if "promotion" in row:
                print(f"  {row['stage']}: {row['promotion']}")
        print(f"plot: {plot}")
    return 0


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def ui_command(output: Path, port: int) -> list[str]:
    """The `mlflow server` command of `selfreward ui`: bound to loopback, never a public interface."""
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    return [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{output / 'mlflow.db'}", "--artifacts-destination",
            str(output / "mlartifacts")]


def cmd_ui(args: argparse.Namespace) -> int:
    output = Path(args.output).resolve()
    db = output / "mlflow.db"
    if not db.is_file():
        return _fail(f"no MLflow store in {output} (expected {db}); run `selfreward run` first")
    from pipeline.ui_links import run_links

    command = ui_command(output, args.port)
    print(f"MLflow UI: http://127.0.0.1:{args.port}  (Ctrl-C to stop)")
    for what, url in run_links(db, args.experiment, args.run_name, f"http://127.0.0.1:{args.port}").items():
        print(f"  {what}: {url}")
    print(f"Prefect UI: PREFECT_HOME={output / 'prefect'} prefect server start --host 127.0.0.1")
    sys.stdout.flush()  # before the server's own output, also when stdout is a pipe
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    try:
        return subprocess.run(command, env=env).returncode
    except KeyboardInterrupt:
        return 0


def cmd_join(args: argparse.Namespace) -> int:
    if args.machine_rank < 1:
        return _fail("--machine-rank: machine 0 runs the flow (`selfreward run`); the others join as 1 .. num_machines - 1")
    from flows.join import JoinError, join_launches

    run_dir = Path(args.output).resolve() / args.run_name
    print(f"joining the launches of {run_dir} as machine {args.machine_rank} (Ctrl-C to stop)", flush=True)
    try:
        join_launches(run_dir, args.machine_rank)
    except JoinError as err:
        return _fail(str(err))
    except KeyboardInterrupt:
        return 130
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfreward", description="Self-Rewarding Language Models as pipelines.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run or resume a pipeline")
    run.add_argument("config", nargs="?", help="YAML config (default: the embedded configs/demo.yaml)")
    run.add_argument("--output", default="runs", help="output directory (default: ./runs)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field, e.g. --set iteration.dpo.beta=0.2")
    run.add_argument("--more-iterations", type=_non_negative, default=0, metavar="N",
                     help="continue a finished run with N more iterations (an unfinished one is resumed first)")
    run.set_defaults(func=cmd_run)

    compare = sub.add_parser("compare", help="per-stage table and plot of a run")
    compare.add_argument("run_name", nargs="?", help="run name (default: the most recent run)")
    compare.add_argument("--output", default="runs")
    compare.add_argument("--experiment", default="selfreward")
    compare.add_argument("--json", action="store_true", help="print a JSON list, one object per stage")
    compare.set_defaults(func=cmd_compare)

    ui = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 for an output directory")
    ui.add_argument("--output", default="runs")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--run", dest="run_name", help="run whose direct links are printed (default: the most recent)")
    ui.add_argument("--experiment", default="selfreward")
    ui.set_defaults(func=cmd_ui)

    join = sub.add_parser("join", help="on machine K of a multi-machine run: start its share of every launched step")
    join.add_argument("run_name", help="the run_name of the run machine 0 runs")
    join.add_argument("--output", default="runs", help="the run's output directory (the same absolute path as on machine 0)")
    join.add_argument("--machine-rank", type=int, required=True, help="this machine's rank (1 .. num_machines - 1)")
    join.set_defaults(func=cmd_join)
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_env_defaults()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        return _fail(str(err))
    except Exception as err:
        if isinstance(err, _user_errors()):
            return _fail(str(err))
        if isinstance(err, _run_failures()):
            return _fail(str(err), EXIT_FAILED)
        raise


if __name__ == "__main__":
    sys.exit(main())
