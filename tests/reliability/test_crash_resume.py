"""One run directory lives through SIGKILLs at five points, a second run started beside it, and an
MLflow server that dies mid-run and comes back; in the end it must equal an uninterrupted run.

The scenario runs once (module fixture, ~7 CLI launches) and the tests below each check one
property of what it recorded. Each launch is the real `python -m pipeline.cli run CONFIG --output
DIR` in its own process group; `SELFREWARD_PAUSE_STEP` makes it stop at a chosen point and write a
marker, then the test kills it with SIGKILL (or, for the MLflow outage, lets it go on).
"""

import json
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import StateType
from prefect.states import Completed, Running

from flows.superseded import crash_superseded_runs
from pipeline.runlock import LOCK_FILE
from pipeline.tracking import TAG_OUTCOME, TAG_RUN_NAME, Tracker, flatten, portable_paths
from tests.reliability.helpers import (
    CLI,
    cli_env,
    digests,
    hidden_entries,
    launch,
    manifests,
    read_manifest,
    wait_for_marker,
    write_config,
)
from tests.servers import free_port, kill9, mlflow_server, stop

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

CONFIG = ["run_name=crash", "iteration.dpo.checkpoint_every=1", "runtime.retries=0", "eval.enabled=false",
          "tracking.retries=2", "tracking.retry_backoff_seconds=0.2"]
# (pause point, temp folder the step leaves while paused, published folder, when the kill lands)
WRITTEN = "outputs and manifest written to the temp folder, not yet published"
KILLS = [
    ("iter-1/candidates", "iter-1/.candidates.tmp", "iter-1/candidates", f"sampling: {WRITTEN}"),
    ("iter-1/judge", "iter-1/.judgments.tmp", "iter-1/judgments", f"judging: {WRITTEN}"),
    ("iter-1/pairs", "iter-1/.pairs.tmp", "iter-1/pairs", f"pair building: {WRITTEN}"),
    ("iter-1/dpo@2", None, "iter-1/checkpoint", "DPO mid-training, after optimizer step 2 of 3"),
    ("iter-1/dpo", "iter-1/.checkpoint.tmp", "iter-1/checkpoint", "checkpoint save: weights in the temp folder, not yet published"),
]
OUTAGE_POINT = "iter-2/candidates"
COMPARED = [
    "sft/model/model.safetensors",
    "iter-1/pairs/preference_seq.memmap.npy", "iter-1/pairs/pairs.jsonl", "iter-1/pairs/rewards.memmap.npy",
    "iter-1/checkpoint/model/model.safetensors",
    "iter-2/pairs/preference_seq.memmap.npy", "iter-2/pairs/pairs.jsonl",
    "iter-2/checkpoint/model/model.safetensors",
]


def _paused_run(point, config, out, env, marker, logs, n):
    log = logs / f"{n}-{point.replace('/', '_')}.log"
    proc = launch(config, out, env, log, pause=point)
    return proc, wait_for_marker(marker, proc, log), log


@pytest.fixture(scope="module")
def scenario(prefect_harness, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crash")
    logs = tmp / "logs"
    logs.mkdir()
    config_path, config = write_config(tmp / "tiny.yaml", *CONFIG)
    marker = tmp / "paused.json"
    base_env = cli_env(prefect_harness, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    # The uninterrupted reference runs beside the scenario (sqlite tracking), overlapping its waits.
    reference = launch(config_path, tmp / "reference", base_env, logs / "reference.log")
    port, store = free_port(), tmp / "mlflow"
    server = mlflow_server(store, port, base_env)
    env = {**base_env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "SELFREWARD_PAUSE_MARKER": str(marker)}
    out = tmp / "crashed"
    run_dir = out / config.run_name
    facts: dict = {"config": config, "run_dir": run_dir, "tracking_uri": env["MLFLOW_TRACKING_URI"], "kills": {}}
    procs = [reference]
    try:
        for n, (point, temp, *_) in enumerate(KILLS):
            proc, paused, _ = _paused_run(point, config_path, out, env, marker, logs, n)
            procs.append(proc)
            seen = {"published": manifests(run_dir), "temp_manifest": None, "pid": paused["pid"]}
            if temp and (run_dir / temp / "manifest.json").is_file():
                seen["temp_manifest"] = read_manifest(run_dir / temp)
            if n == 0:  # a second run on the same directory while this one holds it
                started = time.monotonic()
                second = subprocess.run([*CLI, "run", str(config_path), "--output", str(out)], env=env,
                                        capture_output=True, text=True, timeout=300)
                facts["second_run"] = (second.returncode, second.stderr, time.monotonic() - started, paused["pid"])
            kill9(proc)
            marker.unlink()
            facts["kills"][point] = seen

        # MLflow goes away while the run is paused, then the run goes on and must fail clearly.
        proc, _, log = _paused_run(OUTAGE_POINT, config_path, out, env, marker, logs, len(KILLS))
        procs.append(proc)
        kill9(server)
        released = time.monotonic()
        marker.unlink()
        code = proc.wait(timeout=300)
        facts["outage"] = (code, log.read_text(), time.monotonic() - released)
        server = mlflow_server(store, port, base_env)  # same port, same sqlite file

        final = launch(config_path, out, env, logs / "final.log")
        procs.append(final)
        facts["final_code"] = (final.wait(timeout=600), (logs / "final.log").read_text()[-4000:])
        facts["reference_code"] = (reference.wait(timeout=600), (logs / "reference.log").read_text()[-4000:])
        facts["reference_dir"] = tmp / "reference" / config.run_name
        yield facts
    finally:
        for proc in procs:
            if proc.poll() is None:
                kill9(proc)
        stop(server)


@pytest.mark.reliability(area="concurrent runs", fault="a second `selfreward run` on a run directory in use",
                         expected="refused at once: exit 2, message names the directory and the holder's pid")
def test_second_run_on_the_same_directory_is_refused(scenario):
    code, stderr, _, holder = scenario["second_run"]
    assert code == 2, stderr[-3000:]
    assert "is in use by another selfreward run" in stderr and f"pid {holder}" in stderr
    assert str(scenario["run_dir"]) in stderr
    assert "Traceback" not in stderr and "Beginning flow run" not in stderr  # refused before Prefect starts


@pytest.mark.reliability(area="concurrent runs", fault="the lock holder is killed with SIGKILL",
                         expected="no stale lock: the next run takes the directory over")
def test_a_killed_run_leaves_no_stale_lock(scenario):
    assert (scenario["run_dir"] / LOCK_FILE).is_file()  # the file stays; the kernel dropped the flock
    assert scenario["final_code"][0] == 0, scenario["final_code"][1]


@pytest.mark.parametrize(
    ("point", "temp", "final"),
    [pytest.param(point, temp, final, id=point, marks=pytest.mark.reliability(
        area="crash and resume", fault=f"SIGKILL during {when} (`{point}`)",
        expected="folder not taken as complete; step redone; finished steps reused")) for point, temp, final, when in KILLS],
)
def test_killed_step_is_redone_and_nothing_finished_is_recomputed(scenario, point, temp, final):
    seen = scenario["kills"][point]
    run_dir = scenario["run_dir"]
    assert final not in seen["published"], "the killed step was published"
    if temp is not None:
        assert seen["temp_manifest"] is not None, "the pause point is after the step wrote its manifest"
    end = manifests(run_dir)
    for folder, mtime in seen["published"].items():
        assert end[folder] == mtime, f"{folder} finished before the kill but was recomputed"
    assert final in end


@pytest.mark.reliability(area="crash and resume", fault="seven launches, five SIGKILLs and an MLflow outage",
                         expected="final weights and pairs equal an uninterrupted run (sha256)")
def test_resumed_run_equals_an_uninterrupted_run(scenario):
    assert scenario["reference_code"][0] == 0, scenario["reference_code"][1]
    assert scenario["final_code"][0] == 0, scenario["final_code"][1]
    run_dir, reference = scenario["run_dir"], scenario["reference_dir"]
    assert digests(run_dir, COMPARED) == digests(reference, COMPARED)
    for folder in manifests(reference):
        assert read_manifest(run_dir / folder)["fingerprint"] == read_manifest(reference / folder)["fingerprint"]
    assert hidden_entries(run_dir) == []  # no temp folders, training states or markers left


@pytest.mark.reliability(area="crash and resume", fault="SIGKILL while building pairs",
                         expected="no duplicated or lost pairs")
def test_no_pair_is_duplicated_or_lost(scenario):
    for iteration in (1, 2):
        pairs_dir = scenario["run_dir"] / f"iter-{iteration}" / "pairs"
        rows = [json.loads(line) for line in (pairs_dir / "pairs.jsonl").read_text().splitlines()]
        expected = read_manifest(pairs_dir)["summary"]["pairs"]
        assert [r["index"] for r in rows] == list(range(expected))
        assert len({r["prompt"] for r in rows}) == expected  # one pair per prompt, none twice
        reference_rows = (scenario["reference_dir"] / f"iter-{iteration}" / "pairs" / "pairs.jsonl").read_text()
        assert len(reference_rows.splitlines()) == expected
    assert read_manifest(scenario["run_dir"] / "iter-1" / "pairs")["summary"]["pairs"] > 0


@pytest.mark.reliability(area="DPO training state", fault="SIGKILL mid-DPO, then again before the checkpoint is published",
                         expected="each restart continues from the last saved training state")
def test_dpo_resumed_from_its_training_state(scenario):
    paused = scenario["kills"]["iter-1/dpo"]["temp_manifest"]
    assert paused["summary"]["resumed_from_step"] == 1  # killed at step 2: state of step 1
    final = read_manifest(scenario["run_dir"] / "iter-1" / "checkpoint")["summary"]
    assert final["resumed_from_step"] == 2 and final["steps"] == scenario["config"].iteration.dpo.num_train_steps
    reference = read_manifest(scenario["reference_dir"] / "iter-1" / "checkpoint")["summary"]
    assert reference["resumed_from_step"] == 0
    assert final["final/loss"] == reference["final/loss"] and final["mean/loss"] == reference["mean/loss"]


@pytest.mark.reliability(area="MLflow outage", fault="`mlflow server` killed mid-run",
                         expected="bounded retries, then exit 1 with a message naming the tracking URI")
def test_mlflow_outage_fails_with_a_clear_message(scenario):
    code, log, seconds = scenario["outage"]
    assert code == 1, log[-4000:]
    last = [line for line in log.splitlines() if line.startswith("selfreward: error:")][-1]
    assert last.startswith("selfreward: error: MLflow tracking store") and scenario["tracking_uri"] in last
    assert "is unreachable (3 attempts" in last and "last error: connection refused" in last
    assert "run the same command" in last
    assert seconds < 120  # 3 attempts with 0.2 s back-off, MLflow's own retries off


@pytest.mark.reliability(area="MLflow outage", fault="what the user sees when the `mlflow server` dies mid-run",
                         expected="no traceback: retry lines, one line per failed Prefect run, the message last")
def test_mlflow_outage_shows_the_message_not_tracebacks(scenario):
    _, log, _ = scenario["outage"]
    assert "Traceback" not in log and "urllib3" not in log, log[-4000:]
    errors = [line for line in log.splitlines() if "| ERROR" in line or line.startswith("selfreward: error:")]
    assert errors and all("MLflow tracking store" in line for line in errors), errors
    assert log.strip().splitlines()[-1].startswith("selfreward: error: MLflow tracking store")


@pytest.mark.reliability(area="MLflow outage", fault="re-run after the server returns (same port, same sqlite)",
                         expected="completes; no duplicated runs, params, metric rows or model versions")
def test_rerun_after_outage_logs_nothing_twice(scenario):
    uri, config = scenario["tracking_uri"], scenario["config"]
    client = MlflowClient(uri)
    tracker = Tracker(uri, config.tracking.experiment)
    runs = client.search_runs([tracker.experiment_id], f"tags.`{TAG_RUN_NAME}` = '{config.run_name}'")
    stages = sorted(r.data.tags["selfreward.stage"] for r in runs)
    assert stages == ["iter-1", "iter-2", "pipeline", "sft"]  # one run each, despite 7 launches
    assert all(r.info.status == "FINISHED" for r in runs)
    parent = next(r for r in runs if r.data.tags["selfreward.stage"] == "pipeline")
    # every param once, paths relative to the output folder (the store can move)
    assert parent.data.params == flatten(portable_paths(config.model_dump(mode="json"), scenario["run_dir"].parent))
    for run in runs:
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (run.data.tags["selfreward.stage"], key, steps)
    iter1 = next(r for r in runs if r.data.tags["selfreward.stage"] == "iter-1")
    dpo_steps = [m.step for m in client.get_metric_history(iter1.info.run_id, "dpo/loss")]
    assert dpo_steps == list(range(1, config.iteration.dpo.num_train_steps + 1))  # none lost, none twice
    assert iter1.data.tags[TAG_OUTCOME] == "completed"
    versions = client.search_model_versions(f"name = '{config.run_name}-policy'")
    assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in runs if r.data.tags["selfreward.stage"] != "pipeline")


@pytest.mark.reliability(area="security", fault="paths written by a run",
                         expected="every step folder inside the run directory; no symlinks")
def test_run_writes_only_inside_its_directory(scenario):
    run_dir = scenario["reference_dir"]
    for folder in manifests(run_dir):
        assert Path(read_manifest(run_dir / folder)["path"]).resolve().is_relative_to(run_dir.resolve())
    assert not [p for p in run_dir.parent.rglob("*") if p.is_symlink()]


def _runs_of(flow_run_ids: list[str]) -> tuple[list, list]:
    """(flow runs and their subflows, their task runs) in the session's Prefect database."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)))
        runs += client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=flow_run_ids)))
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in runs])))
    return runs, tasks


@pytest.mark.reliability(area="crash and resume", fault="Prefect flow, subflow and task runs of the SIGKILLed launches",
                         expected="marked CRASHED by the next launch: none left RUNNING after the resume")
def test_killed_prefect_runs_are_marked_crashed(scenario):
    identity = json.loads((scenario["run_dir"] / ".identity.json").read_text())
    assert len(identity["prefect_flow_runs"]) == len(KILLS) + 2  # the kills, the outage, the final launch
    runs, tasks = _runs_of(identity["prefect_flow_runs"])
    states = [r.state.type for r in runs + tasks]
    assert StateType.RUNNING not in states and StateType.PENDING not in states, states
    crashed = [r for r in runs if r.state.type == StateType.CRASHED and r.parent_task_run_id is None]
    assert len(crashed) == len(KILLS)


@flow(name="superseded-fixture")
def _placeholder_flow() -> None:
    pass


@task(name="superseded-fixture-task")
def _placeholder_task() -> None:
    pass


@pytest.mark.reliability(area="crash and resume", fault="flow run left RUNNING with a RUNNING subflow and task runs",
                         expected="the resume marks all of them CRASHED; its own and finished runs untouched")
def test_superseded_runs_are_crashed_and_others_kept():
    with get_client(sync_client=True) as client:
        dead = client.create_flow_run(_placeholder_flow, state=Running())
        step = client.create_task_run(_placeholder_task, dead.id, "0", state=Running())
        placeholder = client.create_task_run(_placeholder_task, dead.id, "1", state=Running())
        subflow = client.create_flow_run(_placeholder_flow, parent_task_run_id=placeholder.id, state=Running())
        sub_step = client.create_task_run(_placeholder_task, subflow.id, "0", state=Running())
        done = client.create_task_run(_placeholder_task, dead.id, "2", state=Completed())
        current = client.create_flow_run(_placeholder_flow, state=Running())
    assert crash_superseded_runs([str(dead.id), str(current.id)], str(current.id)) == 5
    with get_client(sync_client=True) as client:
        for run in (dead, subflow):
            assert client.read_flow_run(run.id).state.type == StateType.CRASHED
        for run in (step, placeholder, sub_step):
            assert client.read_task_run(run.id).state.type == StateType.CRASHED
        assert client.read_task_run(done.id).state.type == StateType.COMPLETED
        assert client.read_flow_run(current.id).state.type == StateType.RUNNING
