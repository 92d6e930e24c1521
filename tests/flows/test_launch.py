"""Training steps as `accelerate launch` subprocesses on two "machines" of this host (one CPU process
each, gloo): machine 0 runs the flow, machine 1 joins each launch with `selfreward join`, one
checkpoint lands. (Two processes on one machine are launched by test_training_ranks.py and
test_parallel_generation.py.)"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows import self_rewarding_flow
from flows.launch import LAUNCHES_DIR
from pipeline.tracking import Tracker, default_tracking_uri
from tests.flows.conftest import tiny_config
from tests.servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness", "no_mlflow_env")]


def test_sft_and_dpo_on_two_machines_joined_from_the_run_folder(tmp_path):
    """Machine 0's launches wait at a static rendezvous of 2 nodes on 127.0.0.1 until machine 1 joins:
    `selfreward join` starts the same launch from the spec the flow wrote into the run folder."""
    config = tiny_config("iterations=1", "runtime.launcher=accelerate", "runtime.num_processes=2",
                         "runtime.num_machines=2", "runtime.main_process_ip=127.0.0.1",
                         f"runtime.main_process_port={free_port()}")
    joiner = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "join", config.run_name, "--output", str(tmp_path),
                               "--machine-rank", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        result = self_rewarding_flow(config, output_dir=str(tmp_path))
    finally:
        os.killpg(joiner.pid, signal.SIGTERM)
        joined = joiner.communicate(timeout=60)[0]
    for step in ("sft_step", "dpo_step"):  # machine 1 ran its rank of both launches
        assert f"-{step}.json as machine 1" in joined and f"-{step}.json: exit 0" in joined, joined
    run_dir = Path(result["run_dir"])
    for step in ("sft", "iter-1/checkpoint"):
        assert (run_dir / step / "manifest.json").is_file()
        assert (run_dir / step / "model" / "model.safetensors").is_file()
    # Only the main rank publishes; other ranks' scratch folders and the launch specs are gone.
    assert not [p for p in run_dir.rglob(".*") if p.is_dir()]

    tracker = Tracker(default_tracking_uri(tmp_path), config.tracking.experiment)
    client = MlflowClient(default_tracking_uri(tmp_path))
    stages = tracker.stage_runs(config.run_name)
    sft_steps = [m.step for m in client.get_metric_history(stages["sft"], "sft/loss")]
    assert sft_steps == list(range(1, config.sft.num_train_steps + 1))  # logged once, by rank 0
    assert result["rows"][1]["num_pairs"] > 0 and result["rows"][1]["dpo_reward_accuracy"] is not None


def test_join_skips_a_spec_nobody_touches_and_refuses_a_rank_the_run_lacks(tmp_path):
    """A spec left by a crashed flow (never touched again) is not joined; a live one with a rank the run
    lacks ends `join` with exit 2 and a message, before anything is launched."""
    config = tiny_config("runtime.launcher=accelerate", "runtime.num_processes=2", "runtime.num_machines=2",
                         "runtime.main_process_ip=127.0.0.1")
    launches = tmp_path / config.run_name / LAUNCHES_DIR
    launches.mkdir(parents=True)
    spec = {"run_dir": str(tmp_path / config.run_name), "launch": config.runtime.model_dump(mode="json"),
            "config": config.model_dump(mode="json")}
    (launches / "1-sft_step.json").write_text(json.dumps(spec))  # stale: never touched again
    joiner = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "join", config.run_name, "--output", str(tmp_path),
                               "--machine-rank", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    live = launches / "2-dpo_step.json"
    live.write_text(json.dumps(spec))
    deadline = time.monotonic() + 60
    while joiner.poll() is None and time.monotonic() < deadline:
        live.touch()  # machine 0's heartbeat
        time.sleep(0.5)
    out, err = joiner.communicate(timeout=10)
    assert joiner.returncode == 2, out + err
    assert "joining 1-sft_step.json" not in out and "joining 2-dpo_step.json as machine 2" in out
    assert "--machine-rank 2: this run has num_machines 2, so the other machines are 1 .. 1" in err
    assert "Traceback" not in err
