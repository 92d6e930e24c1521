"""Training steps as `accelerate launch` subprocesses: 2 CPU processes train, one checkpoint lands."""

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows import self_rewarding_flow
from pipeline.tracking import Tracker, default_tracking_uri
from tests.flows.conftest import tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness", "no_mlflow_env")]


def test_sft_and_dpo_under_accelerate_launch_with_two_processes(tmp_path):
    config = tiny_config("iterations=1", "runtime.launcher=accelerate", "runtime.num_processes=2")
    result = self_rewarding_flow(config, output_dir=str(tmp_path))
    run_dir = Path(result["run_dir"])
    for step in ("sft", "iter-1/checkpoint"):
        assert (run_dir / step / "manifest.json").is_file()
        assert (run_dir / step / "model" / "model.safetensors").is_file()
    # Only the main rank publishes; other ranks' scratch folders are gone.
    assert not [p for p in run_dir.rglob(".*") if p.is_dir()]

    tracker = Tracker(default_tracking_uri(tmp_path), config.tracking.experiment)
    client = MlflowClient(default_tracking_uri(tmp_path))
    stages = tracker.stage_runs(config.run_name)
    sft_steps = [m.step for m in client.get_metric_history(stages["sft"], "sft/loss")]
    assert sft_steps == list(range(1, config.sft.num_train_steps + 1))  # logged once, by rank 0
    assert result["rows"][1]["num_pairs"] > 0 and result["rows"][1]["dpo_reward_accuracy"] is not None
