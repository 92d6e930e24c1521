"""Defined outcomes for rounds that cannot train, recorded on the stage's MLflow run:

- the judge never produces a parsable score -> skip the round (M_{t+1} = M_t), go on;
- every candidate ties (no preference pair) -> skip the round, go on;
- the DPO loss becomes non-finite -> stop the run (exit 1, clear message), nothing published.

One in-process `selfreward run` (the CLI's `main`) goes through all three, one per iteration.
"""

import contextlib
import io

import pytest
import safetensors.torch
from mlflow.tracking import MlflowClient

from flows.stage import stage_outcome
from flows.stepdir import StepRecord
from pipeline.cli import main
from pipeline.tracking import TAG_OUTCOME, Tracker, default_tracking_uri
from tests.flows.conftest import TINY

pytestmark = pytest.mark.slow
OVERRIDES = TINY + [
    "run_name=outcomes", "iterations=3", "sft.enabled=false", "eval.enabled=false",
    "overrides.1.judge.reward_fn=tests.reliability.rewards:no_score",
    "overrides.2.judge.reward_fn=tests.reliability.rewards:constant",
    "overrides.3.judge.reward_fn=tests.flows.rewards:distinct_letters",
    "overrides.3.dpo.start_learning_rate=1e30",  # diverges at the second optimizer step
]


@pytest.fixture(scope="module")
def outcomes(prefect_harness, tmp_path_factory):
    out = tmp_path_factory.mktemp("outcomes")
    patch = pytest.MonkeyPatch()
    patch.setenv("PREFECT_API_URL", prefect_harness)  # keeps the CLI from setting PREFECT_HOME here
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            code = main(["run", "--output", str(out), *[a for item in OVERRIDES for a in ("--set", item)]])
    finally:
        patch.undo()
    tracker = Tracker(default_tracking_uri(out), "selfreward")
    client = MlflowClient(default_tracking_uri(out))
    runs = {stage: client.get_run(run_id) for stage, run_id in tracker.stage_runs("outcomes").items()}
    runs["pipeline"] = client.get_run(tracker.find_pipeline("outcomes"))
    return {"code": code, "stderr": stderr.getvalue(), "runs": runs, "run_dir": out / "outcomes"}


def _weights(folder):
    return safetensors.torch.load_file(str(folder / "model.safetensors"))


@pytest.mark.reliability(area="training and judging outcomes", fault="the judge never produces a parsable score",
                         expected="round skipped (M_{t+1} = M_t), tag `selfreward.outcome=skipped: ...`, run goes on")
def test_unparsable_judge_skips_the_round(outcomes):
    run = outcomes["runs"]["iter-1"]
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_OUTCOME].startswith("skipped: the judge produced no parsable score (")
    assert run.data.tags[TAG_OUTCOME].endswith("M2 = M1")
    start, end = _weights(outcomes["run_dir"] / "base" / "model"), _weights(outcomes["run_dir"] / "iter-1" / "checkpoint" / "model")
    assert start.keys() == end.keys() and all((start[k] == end[k]).all() for k in start)


@pytest.mark.reliability(area="training and judging outcomes", fault="every candidate ties (empty pair set)",
                         expected="round skipped, tag `selfreward.outcome=skipped: no preference pairs`, run goes on")
def test_tied_candidates_skip_the_round(outcomes):
    run = outcomes["runs"]["iter-2"]
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_OUTCOME] == "skipped: no preference pairs (skipped: {'tie': 6}); M3 = M2"
    assert run.data.metrics["summary/pairs/pairs"] == 0


@pytest.mark.reliability(area="training and judging outcomes", fault="non-finite DPO loss (learning rate 1e30)",
                         expected="run stops: exit 1, message names the iteration and the fix; stage FAILED; nothing published")
def test_non_finite_loss_stops_the_run(outcomes):
    assert outcomes["code"] == 1
    message = outcomes["stderr"].strip().splitlines()[-1]
    assert message.startswith("selfreward: error: iter-3 DPO: non-finite training loss")
    assert "The run stops here" in message and "lower iteration.dpo.start_learning_rate" in message
    run = outcomes["runs"]["iter-3"]
    assert run.info.status == "FAILED"
    assert run.data.tags[TAG_OUTCOME].startswith("failed: NonFiniteLossError: iter-3 DPO: non-finite")
    assert outcomes["runs"]["pipeline"].info.status == "FAILED"
    assert (outcomes["run_dir"] / "iter-3" / "pairs" / "manifest.json").is_file()
    assert not (outcomes["run_dir"] / "iter-3" / "checkpoint").exists()


def test_outcome_wording_without_a_run():
    judged = StepRecord(step="judge", path="j", fingerprint="f",
                        summary={"candidates": 4, "unscored_candidates": 1, "parse_failures": 2, "judgments": 8})
    skipped = StepRecord(step="dpo", path="m", fingerprint="f", summary={"skipped": "no preference pairs"})
    trained = StepRecord(step="dpo", path="m", fingerprint="f", summary={"steps": 3})
    assert stage_outcome(2, trained, judged) == "completed"
    assert stage_outcome(2, skipped, judged) == "skipped: no preference pairs; M3 = M2"
    assert stage_outcome(0, trained, None) == "completed"


@pytest.mark.reliability(area="training and judging outcomes", fault="self-instruct produces no prompt (every one rejected)",
                         expected="run stops: exit 1, message names the iteration, the rejections and the options; "
                                  "stage FAILED; compare shows n/a, not 0.000, for rates of 0 of 0")
def test_an_iteration_without_prompts_stops_the_run_with_a_named_outcome(prefect_harness, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PREFECT_API_URL", prefect_harness)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    overrides = TINY + ["run_name=no-prompts", "iterations=1", "eval.enabled=false", "iteration.on_degenerate=stop",
                        "iteration.prompts.source=self_instruct", "iteration.prompts.min_chars=399",
                        "iteration.prompts.max_chars=400"]
    code = main(["run", "--output", str(tmp_path), *[a for item in overrides for a in ("--set", item)]])
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1
    assert message.startswith("selfreward: error: iter-1: self-instruct produced no prompts ({'too_short': ")
    assert "iteration.on_degenerate to skip or fallback" in message
    tracker = Tracker(default_tracking_uri(tmp_path), "selfreward")
    run = MlflowClient(default_tracking_uri(tmp_path)).get_run(tracker.stage_runs("no-prompts")["iter-1"])
    assert run.info.status == "FAILED" and run.data.tags[TAG_OUTCOME].startswith("failed: DegenerateIterationError")

    skipping = [*overrides, "run_name=no-prompts-skip", "iteration.on_degenerate=skip"]
    assert main(["run", "--output", str(tmp_path), *[a for item in skipping for a in ("--set", item)]]) == 0
    capsys.readouterr()
    assert main(["compare", "no-prompts-skip", "--output", str(tmp_path)]) == 0
    header, _, iteration = capsys.readouterr().out.splitlines()[:3]
    row = dict(zip(header.split(), iteration.split()))
    assert row["num_prompts"] == "0" and row["parse_failure_rate"] == "n/a" and row["skip_rate"] == "n/a"
