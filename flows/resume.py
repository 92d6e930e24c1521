"""What a run does before its first step: make sure the run folder and the tracking server still
describe this run, then record that this flow run is working on it.

Checked before anything is written (each refusal is a ValueError: exit 2 from the CLI):

- the config is the one the run started with (`pipeline.rundir.check_saved_config`), except for a
  raised `iterations`: the run continues from its last finished iteration (config.yaml is rewritten
  and the parent run tagged `selfreward.iterations`);
- every input file still has the content the run read (`pipeline.inputs`). A changed file is refused,
  naming it, once a stage has trained on it (its numbers are in MLflow, its model registered);
  before that (say the step that read it failed on its bad content and the user fixed the file) the
  change is accepted and the steps that read it run again, since the content is in their fingerprints;
- the run name and the registered model belong to no other run on the tracking server
  (`Tracker.claim`: a run is identified by the id in its folder, not by its name).

Then the folder's identity, inputs and config are written, the Prefect runs of earlier launches left
unfinished are marked CRASHED (`flows.superseded`), and the MLflow parent run is opened.
"""

import json
import logging
from pathlib import Path

from flows.stepdir import MANIFEST
from flows.summary import STAGES_FILE
from flows.superseded import crash_superseded_runs
from pipeline.config import RunConfig
from pipeline.inputs import InputChangedError, changed_inputs, write_inputs
from pipeline.report import stage_name
from pipeline.rundir import check_saved_config, read_identity, saved_config, write_config, write_identity
from pipeline.tracking import Tracker, portable_paths, registered_model_name

__all__ = ["TAG_ITERATIONS", "open_run", "trained_stages", "with_more_iterations"]

TAG_ITERATIONS = "selfreward.iterations"
logger = logging.getLogger(__name__)


def open_run(config: RunConfig, output: Path, tracker: Tracker, flow_run_id: str,
             tags: dict[str, str]) -> tuple[Path, str]:
    """Check and record the run folder, then open the MLflow parent run; returns (run folder, parent run id).

    Raises:
        ConfigError: the config differs from the one the run started with.
        InputChangedError: an input file changed after a stage trained on it.
        RunIdentityError: the run name or registered model is another run's on the tracking server.
    """
    run_dir = output / config.run_name
    continued_from = check_saved_config(run_dir, config)
    identity = read_identity(run_dir)
    _check_inputs_unchanged(run_dir, config)
    model = registered_model_name(config.run_name, config.tracking.registered_model) if config.tracking.log_checkpoints else None
    tracker.claim(config.run_name, identity.run_uid, legacy=identity.legacy, registered_model=model)

    crash_superseded_runs(identity.prefect_flow_runs, flow_run_id)
    identity.prefect_flow_runs.append(flow_run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_identity(run_dir, identity)  # before the parent run exists: a kill in between finds it by this id
    write_inputs(run_dir, config)
    write_config(run_dir, config, continued=continued_from is not None)
    if continued_from is not None:
        logger.info("run '%s' continues: iterations %d -> %d", config.run_name, continued_from, config.iterations)
    parent = tracker.start_pipeline(config.run_name, portable_paths(config.model_dump(mode="json"), output),
                                    config.fingerprint(), tags,
                                    identity=identity.run_uid, location=str(run_dir), legacy=identity.legacy,
                                    registered_model=model)
    # MLflow params never change: the `iterations` param is the count the run started with, this tag the current one.
    tracker.set_tags(parent, {TAG_ITERATIONS: str(config.iterations)})
    identity.legacy = False  # an adopted parent is tagged with the identity now
    identity.mlflow = {"tracking_uri": tracker.tracking_uri, "experiment_id": tracker.experiment_id, "parent_run_id": parent}
    write_identity(run_dir, identity)
    return run_dir, parent


def with_more_iterations(config: RunConfig, run_dir: Path, more: int) -> RunConfig:
    """`config` for a launch that should do `more` iterations of new work: a new run keeps its
    `iterations`; a run that finished all its saved iterations gets `more` on top of them; an
    unfinished one (a crashed launch) keeps its saved count and is resumed first. Any other field
    that differs from the saved config is still refused when the run opens."""
    previous = saved_config(run_dir)
    if previous is None or not more:
        return config
    saved = int(previous.get("iterations", config.iterations))
    stages = json.loads((run_dir / STAGES_FILE).read_text()) if (run_dir / STAGES_FILE).is_file() else []
    finished = stage_name(saved) in {row.get("stage") for row in stages}
    iterations = saved + more if finished else saved
    return RunConfig.model_validate({**config.model_dump(mode="json"), "iterations": iterations})


def trained_stages(run_dir: Path) -> list[str]:
    """The stages whose model is published (`sft`, `iter-1`, ...)."""
    stages = ["sft"] if (run_dir / "sft" / MANIFEST).is_file() else []
    return stages + sorted(p.parent.parent.name for p in run_dir.glob(f"iter-*/checkpoint/{MANIFEST}"))


def _check_inputs_unchanged(run_dir: Path, config: RunConfig) -> None:
    changed = changed_inputs(run_dir, config)
    if not changed:
        return
    trained = trained_stages(run_dir)
    if trained:
        raise InputChangedError(
            f"{'; '.join(changed)} changed since run '{config.run_name}' read {'them' if len(changed) > 1 else 'it'}, "
            f"and stage {trained[0]} has already trained on the old content (its numbers are in MLflow). Restore "
            f"the file to resume, or start a new run with --set run_name=<new name>")
    logger.warning("%s changed since run '%s' read it; no stage has trained on it yet, so the steps that read it "
                   "run again", "; ".join(changed), config.run_name)
