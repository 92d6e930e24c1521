"""The ground-truth checker is for evaluation only: a full run with it booby-trapped still trains."""

import pytest

import pipeline.demo_task as demo_task
import pipeline.demo_task.metrics as metrics
import pipeline.demo_task.rules as rules
from flows import self_rewarding_flow
from tests.flows.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("prefect_harness", "no_mlflow_env")


def test_training_path_never_calls_the_checker(tmp_path, monkeypatch):
    calls = []

    def trap(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the ground-truth checker was called outside evaluation")

    for module in (demo_task, metrics, rules):
        monkeypatch.setattr(module, "check", trap)
    # Iteration 2 judges itself (no external reward): SFT, sampling, judging, pairs and DPO all run.
    config = tiny_config("eval.enabled=false")
    result = self_rewarding_flow(config, output_dir=str(tmp_path))
    assert [r["stage"] for r in result["rows"]] == ["sft", "iter-1", "iter-2"]
    assert calls == []
