"""One iteration as a subflow: every step runs as its task, M_t is loaded once for the steps that read
it and released before DPO loads its own copy, and the stage lands in MLflow."""

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import flows.steps.common
import pipeline.models
from flows import iteration_flow, steps
from flows.stepdir import model_dir
from pipeline.tracking import Tracker, default_tracking_uri
from tests.flows.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("prefect_harness", "no_mlflow_env")


def test_iteration_loads_m_t_once_and_releases_it_before_training(tmp_path, monkeypatch):
    config = tiny_config("sft.enabled=false", "iterations=1", "eval.enabled=false")
    run_dir = tmp_path / config.run_name
    data = steps.data_step(config, run_dir)
    base = steps.base_model_step(config, run_dir, data)
    events = []

    def recording(purpose, load):
        def wrapped(path, **kwargs):
            events.append((purpose, Path(path).parent.name))
            return load(path, **kwargs)
        return wrapped

    monkeypatch.setattr(pipeline.models, "load_model_and_tokenizer",
                        recording("read", pipeline.models.load_model_and_tokenizer))
    monkeypatch.setattr(flows.steps.common, "load_model_and_tokenizer",
                        recording("train", flows.steps.common.load_model_and_tokenizer))
    release = pipeline.models.InferenceModel.release
    monkeypatch.setattr(pipeline.models.InferenceModel, "release",
                        lambda self: events.append(("release", self.loaded)) or release(self))

    tracking_uri = default_tracking_uri(tmp_path)
    tracker = Tracker(tracking_uri, config.tracking.experiment)
    parent = tracker.start_pipeline(config.run_name, {}, "fp", {})
    new_model = iteration_flow(config, 1, str(run_dir), [base], data, parent, tracking_uri)

    # M_t read once for sampling, released before DPO; M_{t+1} read once for its evaluation steps
    assert events == [("read", "base"), ("release", True), ("train", "base"), ("read", "checkpoint"), ("release", True)]
    assert model_dir(new_model) == run_dir / "iter-1" / "checkpoint" / "model"
    run = MlflowClient(tracking_uri).get_run(tracker.stage_runs(config.run_name)["iter-1"])
    assert run.info.status == "FINISHED" and run.data.metrics["summary/pairs/pairs"] > 0
    assert run.data.tags["selfreward.outcome"] == "completed"
