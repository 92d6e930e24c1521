"""A demo iteration with `engine.name: vllm` through the real flow: M_t's candidates and judgments
and the new model's evaluation come from vLLM workers (the native decoding loop never runs), DPO
trains on the resulting pairs, and no worker (or its log) outlives the iteration.

Needs `.venv-vllm` (`make vllm-env`; skipped without it outside CI). The tiny model has head size
32 (hidden 64, 2 heads), which vLLM's CPU attention supports.
"""

import gc
import json

import pytest
from mlflow.tracking import MlflowClient

import generation.decoding
from flows import iteration_flow, steps
from generation import VllmEngine
from pipeline.tracking import Tracker, default_tracking_uri
from tests.flows.conftest import tiny_config
from tests.generation.test_vllm_engine import requires_vllm

pytestmark = [pytest.mark.usefixtures("prefect_harness", "no_mlflow_env"), pytest.mark.slow, requires_vllm]

# The untrained model cannot write "Score: 3"; any digit in its judgment is its score here, so that
# self-judging through vLLM yields pairs and DPO trains.
ANY_DIGIT_JUDGE = """name: any-digit
template: "Rate the response. {prompt} / {response}"
score_pattern: '([0-9])'
min_score: 0
max_score: 9
"""


def test_an_iteration_samples_judges_and_evaluates_on_vllm(tmp_path, monkeypatch):
    template = tmp_path / "judge.yaml"
    template.write_text(ANY_DIGIT_JUDGE)
    config = tiny_config("model.tiny.hidden_size=64", "model.tiny.num_heads=2", "engine.name=vllm", "iterations=1",
                         "sft.enabled=false", "overrides.1.judge.reward_fn=null", f"iteration.judge.template={template}",
                         "iteration.judge.num_judgments=3", "iteration.judge.sampling.max_new_tokens=24")
    run_dir = tmp_path / config.run_name
    data = steps.data_step(config, run_dir)
    base = steps.base_model_step(config, run_dir, data)
    calls, processes, logs = [], [], []
    generate_completions, start = VllmEngine.generate_completions, VllmEngine.start

    def recorded_start(self):  # runs before every call; a no-op while the worker is up
        start(self)
        if self._process not in processes:
            processes.append(self._process)
            logs.append(self.log_file)

    def native_loop(*args, **kwargs):
        raise AssertionError("the native decoding loop ran with engine.name=vllm")

    monkeypatch.setattr(VllmEngine, "generate_completions",
                        lambda self, *a, **k: calls.append(self.model_dir.relative_to(run_dir).parts[0])
                        or generate_completions(self, *a, **k))
    monkeypatch.setattr(VllmEngine, "start", recorded_start)
    monkeypatch.setattr(generation.decoding, "_decode_bucket", native_loop)

    tracking_uri = default_tracking_uri(tmp_path)
    tracker = Tracker(tracking_uri, config.tracking.experiment)
    parent = tracker.start_pipeline(config.run_name, {}, "fp", {})
    iteration_flow(config, 1, str(run_dir), [base], data, parent, tracking_uri)

    candidates = [json.loads(line) for line in (run_dir / "iter-1" / "candidates" / "candidates.jsonl").open()]
    judgments = [json.loads(line) for line in (run_dir / "iter-1" / "judgments" / "judgments.jsonl").open()]
    assert len(candidates) == 6 and all(len(row["candidates"]) == 3 for row in candidates)
    assert len(judgments) == 6 and all(len(c["judgments"]) == 3 for row in judgments for c in row["candidates"])
    # M_t (base) answers and judges through one worker; the new model is evaluated through another.
    assert calls[:2] == ["base", "base"] and "iter-1" in calls
    run = MlflowClient(tracking_uri).get_run(tracker.stage_runs(config.run_name)["iter-1"])
    assert run.data.tags["selfreward.outcome"] == "completed" and run.data.metrics["summary/pairs/pairs"] > 0
    assert "summary/eval/gt_score" in run.data.metrics
    gc.collect()
    assert len(processes) == 2 and all(p.poll() == 0 for p in processes)  # released, and collected after eval
    assert not any(log.exists() for log in logs)  # a clean stop removes the worker's temporary log
