"""The self-improvement remedies, each reached from the config and run through a real iteration on a
briefly trained tiny model (it judges and writes tasks well enough to exercise every path):
skill replay in DPO, anchored rejection, CREAM consistency, meta-judge pairs, judge health and the
judge choice, and the named outcomes of an iteration that cannot improve."""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows import iteration_flow, steps
from flows.outcomes import DegenerateIterationError
from pipeline.tracking import Tracker, default_tracking_uri
from tests.flows.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("prefect_harness", "no_mlflow_env")
TRAINED = ["sft.num_train_steps=200", "sft.start_learning_rate=3e-3", "model.tiny.hidden_size=64", "model.tiny.num_layers=2",
           "model.tiny.intermediate_size=128", "model.tiny.max_position_embeddings=320", "sft.max_len=256",
           "data.num_eft=96", "data.judge_holdout=16", "data.num_self_instruct=24", "data.num_meta_judge=24",
           "iteration.judge.template=configs/judges/demo_rules.yaml", "iteration.meta_judge.template=configs/judges/demo_meta.yaml",
           "iteration.judge.sampling.max_new_tokens=48", "iteration.prompts.num_prompts=8",
           "overrides.1.judge.reward_fn=null", "iterations=1", "eval.enabled=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Seed data, M0 and a briefly SFT-trained M1 in one run folder (steps called directly)."""
    config = tiny_config(*TRAINED)
    run_dir = tmp_path_factory.mktemp("remedies") / config.run_name
    data = steps.data_step(config, run_dir)
    base = steps.base_model_step(config, run_dir, data)
    return {"run_dir": run_dir, "data": data, "models": [base, steps.sft_step(config, run_dir, base, data)]}


def run_iteration(trained, *overrides):
    config = tiny_config(*TRAINED, *overrides)
    tracking_uri = default_tracking_uri(trained["run_dir"].parent)
    tracker = Tracker(tracking_uri, config.tracking.experiment)
    parent = tracker.start_pipeline(config.run_name, {}, "fp", {})
    record = iteration_flow(config, 1, str(trained["run_dir"]), trained["models"], trained["data"], parent, tracking_uri)
    run = MlflowClient(tracking_uri).get_run(tracker.stage_runs(config.run_name)["iter-1"])
    return record, run


def summary(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())["summary"]


def test_every_remedy_runs_in_one_iteration(trained):
    record, run = run_iteration(
        trained, "iteration.dpo.replay_batch_size=4", "iteration.candidates.anchor_samples=2",
        "iteration.consistency.enabled=true", "iteration.meta_judge.enabled=true", "iteration.meta_judge.max_share=0.5",
        "iteration.on_degenerate=skip")
    it = trained["run_dir"] / "iter-1"
    candidates = [json.loads(line) for line in (it / "candidates" / "candidates.jsonl").read_text().splitlines()]
    assert all(len(row["anchors"]) == 2 for row in candidates)  # sampled from M1 = models[0] here
    judged = [json.loads(line) for line in (it / "judgments" / "judgments.jsonl").read_text().splitlines()]
    assert all(len(row["anchors"]) == 2 for row in judged)
    consistency, pairs, meta = summary(it / "consistency"), summary(it / "pairs"), summary(it / "judge-pairs")
    assert consistency["prompts"] >= 0 and 0 <= consistency["label_smoothing"] < 0.5
    assert meta["compared_candidates"] >= meta["judge_pairs"] >= 0 and pairs["judge_pairs"] <= meta["judge_pairs"]
    assert pairs["pairs"] > 0 and 0 <= pairs["anchored_pairs"] <= pairs["pairs"]
    assert record.summary["label_smoothing"] == consistency["label_smoothing"]
    assert record.summary["final/replay/nll"] > 0  # skill replay trained beside the pairs
    health = summary(it / "judge_health")
    assert health["examples"] == 16 and health["judgments"] == 16 * 2  # K = 2 judgments each
    assert run.data.tags["selfreward.judge"] == "current judge: M2" and run.data.tags["selfreward.outcome"] == "completed"
    assert "summary/judge_health/pairwise_accuracy" in run.data.metrics


def test_a_judge_failing_its_gate_is_a_named_outcome(trained):
    with pytest.raises(DegenerateIterationError, match=r"iter-1: M2 failed the judge gate \(pairwise accuracy"):
        run_iteration(trained, "iteration.judge.gate.min_pairwise_accuracy=1.0", "run_name=gate-stop",
                      "iteration.on_degenerate=stop")
    record, run = run_iteration(trained, "iteration.judge.gate.min_pairwise_accuracy=1.0",
                                "iteration.on_degenerate=skip", "run_name=gate-skip")
    assert record.summary["skipped"].startswith("M2 failed the judge gate") and record.summary["steps"] == 0
    assert run.data.tags["selfreward.outcome"].startswith("skipped: M2 failed the judge gate")


def test_no_prompts_stops_or_falls_back_to_the_pool(trained):
    reject_all = ["iteration.prompts.min_chars=399", "iteration.prompts.max_chars=400"]
    with pytest.raises(DegenerateIterationError, match="iter-1: self-instruct produced no prompts"):
        run_iteration(trained, *reject_all, "run_name=prompts-stop", "iteration.prompts.source=self_instruct",
                      "iteration.on_degenerate=stop")
    record, run = run_iteration(trained, *reject_all, "run_name=prompts-fallback", "iteration.prompts.source=self_instruct",
                                "iteration.on_degenerate=fallback", "overrides.1.judge.reward_fn=tests.flows.rewards:distinct_letters")
    it = trained["run_dir"] / "iter-1"
    assert summary(it / "prompts")["prompts"] == 0 and summary(it / "prompts-from-seed")["prompts"] == 8
    assert run.data.tags["selfreward.outcome"] == "completed"
