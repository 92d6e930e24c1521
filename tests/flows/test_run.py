"""The whole flow on a tiny config: stages in MLflow, readable pairs, registered versions, resume, and the
seed design's DPO options (EMA reference, early stopping on held-out pairs) reached from the config."""

from pathlib import Path
from uuid import UUID

import pytest
from mlflow.tracking import MlflowClient
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from dpo import DPODataset
from dpo.files import sha256_file
from flows import self_rewarding_flow
from flows.resume import TAG_ITERATIONS
from flows.stepdir import FAIL_STEP_ENV, MANIFEST, InjectedFault, StepRecord
from pipeline.config import ConfigError
from pipeline.promotion import TAG_CHAMPION, TAG_PROMOTION, decisions
from pipeline.rundir import saved_config
from pipeline.tracking import TAG_PARENT, Tracker, default_tracking_uri
from tests.flows.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("prefect_harness", "no_mlflow_env")
STAGES = ["sft", "iter-1", "iter-2"]


# Iteration 1 trains with an EMA reference and validates on a third of its pairs after every step,
# keeping the best step's weights.
SEED_FEATURES = ["overrides.1.dpo.ref_ema_decay=0.9", "overrides.1.dpo.early_stopping.valid_fraction=0.34",
                 "overrides.1.dpo.early_stopping.eval_every=1"]


def test_end_to_end_stages_metrics_pairs_and_model_versions(tmp_path):
    config = tiny_config("runtime.retry_delay_seconds=0", *SEED_FEATURES)
    result = self_rewarding_flow(config, output_dir=str(tmp_path))
    run_dir = Path(result["run_dir"])

    rows = result["rows"]
    assert [r["stage"] for r in rows] == STAGES
    assert all(0.0 <= r["gt_score"] <= 1.0 and "judge_pairwise_accuracy" in r for r in rows)
    assert Path(result["plot"]).is_file()

    tracker = Tracker(default_tracking_uri(tmp_path), config.tracking.experiment)
    client = MlflowClient(default_tracking_uri(tmp_path))
    parent = tracker.find_pipeline(config.run_name)
    assert client.get_run(parent).info.status == "FINISHED"
    assert client.get_run(parent).data.params["iteration.dpo.beta"] == "0.1"
    children = tracker.stage_runs(config.run_name)
    assert sorted(children) == sorted(STAGES)
    for run_id in children.values():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags[TAG_PARENT] == parent
        assert "summary/eval/gt_score" in run.data.metrics
        # Curves are named by their trainer, one-point summaries sit under summary/ (MLflow lists them last).
        assert all(key.split("/")[0] in ("sft", "dpo", "summary") for key in run.data.metrics), run.data.metrics
    plots = {stage: {a.path for a in client.list_artifacts(run_id, "plots")} for stage, run_id in children.items()}
    assert "plots/learning_curves.png" in plots["sft"] and "plots/learning_curves.png" in plots["iter-1"]
    assert "plots/judge_scores.png" in plots["iter-1"]
    assert len(client.get_metric_history(children["iter-1"], "dpo/rewards/accuracies")) == 3
    sft_loss = [m.value for m in client.get_metric_history(children["sft"], "sft/loss")]
    assert len(sft_loss) == config.sft.num_train_steps and "dpo/loss" not in client.get_run(children["sft"]).data.metrics
    # A one-epoch SFT round: one epoch mean, at the last step, equal to the mean of the step losses.
    [epoch] = client.get_metric_history(children["sft"], "sft/epoch_loss")
    assert epoch.step == config.sft.num_train_steps and epoch.value == pytest.approx(sum(sft_loss) / len(sft_loss))

    # Early stopping ran on held-out pairs, logged its curve and restored the best step's weights.
    validation = client.get_metric_history(children["iter-1"], "dpo/eval/score")
    manifest = StepRecord.model_validate_json((run_dir / "iter-1" / "checkpoint" / MANIFEST).read_text())
    assert manifest.summary["valid_pairs"] == 2 and len(validation) == manifest.summary["steps"] == 3
    assert manifest.summary["best_score"] == min(m.value for m in validation)
    assert client.get_run(children["iter-1"]).data.params["dpo.ref_ema_decay"] == "0.9"

    for iteration in (1, 2):
        pairs = DPODataset(run_dir / f"iter-{iteration}" / "pairs")
        assert len(pairs) == rows[iteration]["num_pairs"]
        assert (run_dir / f"iter-{iteration}" / "checkpoint" / "model" / "config.json").is_file()

    name = f"{config.run_name}-policy"
    versions = {alias: client.get_model_version_by_alias(name, alias).version for alias in STAGES}
    assert len(set(versions.values())) == 3
    newest = max(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    assert newest == int(versions["iter-2"])  # what `models:/<name>/latest` resolves to

    # Champion and challenger: the alias follows the decisions, each stage and version says why.
    decided = decisions(tracker.stage_metrics(parent), config.promotion)
    champion = STAGES[[d.stage for d in decided if d.promoted][-1]]
    assert result["champion"] == champion and client.get_run(parent).data.tags[TAG_CHAMPION] == champion
    assert client.get_model_version_by_alias(name, "champion").version == versions[champion]
    for decision, stage in zip(decided, STAGES, strict=True):
        assert client.get_run(children[stage]).data.tags[TAG_PROMOTION] == decision.reason
        version = client.get_model_version(name, versions[stage])
        assert version.tags[TAG_PROMOTION] == decision.reason and "alias" not in version.tags
        assert f"**{config.run_name} {stage}**" in version.description and "| gt_score |" in version.description

    # The verdict: on the parent run in MLflow and as the Prefect flow run's own artifact.
    assert {"summary/verdict.md", "summary/stages.json"} <= {a.path for a in client.list_artifacts(parent, "summary")}
    verdict = Path(result["verdict"]).read_text()
    assert f"**champion: {champion} " in verdict and "| iter-2 (M3) |" in verdict
    flow_run_id = UUID(client.get_run(parent).data.tags["prefect.flow_run_id"])
    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=["demo-verdict"])))
    assert len(artifacts) == 1 and artifacts[0].data.startswith(verdict) and artifacts[0].type == "markdown"


def test_iterations_start_from_the_champion_when_configured(tmp_path):
    # No stage can beat M1's gt_score by more than 1.0: M1 stays champion, so iteration 2 starts from
    # M1 instead of M2 (its subflow is handed M1's lineage only).
    config = tiny_config("promotion.start_from=champion", "promotion.margin=1.0")
    result = self_rewarding_flow(config, output_dir=str(tmp_path))
    assert result["champion"] == "sft"
    client = MlflowClient(default_tracking_uri(tmp_path))
    children = Tracker(default_tracking_uri(tmp_path), config.tracking.experiment).stage_runs(config.run_name)
    reason = client.get_run(children["iter-2"]).data.tags[TAG_PROMOTION]
    assert reason.endswith("champion stays sft"), reason
    with get_client(sync_client=True) as prefect:
        iter2 = prefect.read_flow_run(UUID(client.get_run(children["iter-2"]).data.tags["prefect.flow_run_id"]))
    assert [Path(m["path"]).name for m in iter2.parameters["models"]] == ["sft"]
    name = f"{config.run_name}-policy"
    assert client.get_model_version_by_alias(name, "champion").version == client.get_model_version_by_alias(name, "sft").version


def test_a_finished_run_continues_with_more_iterations(tmp_path):
    config = tiny_config("iterations=1")
    run_dir = Path(self_rewarding_flow(config, output_dir=str(tmp_path))["run_dir"])
    before = _manifest_times(run_dir)
    continued = self_rewarding_flow(config, output_dir=str(tmp_path), more_iterations=1)  # as the nightly deployment
    assert [r["stage"] for r in continued["rows"]] == STAGES
    after = _manifest_times(run_dir)
    assert {k: after[k] for k in before} == before and "iter-2/checkpoint/manifest.json" in after  # only iter-2 is new
    assert saved_config(run_dir)["iterations"] == 2
    tracker = Tracker(default_tracking_uri(tmp_path), config.tracking.experiment)
    client = MlflowClient(default_tracking_uri(tmp_path))
    parents = client.search_runs([tracker.experiment_id], "tags.`selfreward.stage` = 'pipeline'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags[TAG_ITERATIONS] == "2" and parents[0].data.params["iterations"] == "1"
    assert sorted(tracker.stage_runs(config.run_name)) == sorted(STAGES)
    assert client.get_model_version_by_alias(f"{config.run_name}-policy", "iter-2").run_id == tracker.stage_runs(
        config.run_name)["iter-2"]
    with pytest.raises(ConfigError, match="not lowered to 1"):  # the continued run keeps its iterations
        self_rewarding_flow(config, output_dir=str(tmp_path))


def _manifest_times(run_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob(MANIFEST)}


def test_resume_after_a_failure_in_iteration_2_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    config = tiny_config("runtime.retries=0")
    interrupted, clean = tmp_path / "interrupted", tmp_path / "clean"

    monkeypatch.setenv(FAIL_STEP_ENV, "iter-2/dpo")
    with pytest.raises(InjectedFault):
        self_rewarding_flow(config, output_dir=str(interrupted))
    run_dir = interrupted / config.run_name
    before = _manifest_times(run_dir)
    assert "iter-2/pairs/manifest.json" in before and "iter-2/checkpoint/manifest.json" not in before

    monkeypatch.delenv(FAIL_STEP_ENV)
    self_rewarding_flow(config, output_dir=str(interrupted))
    after = _manifest_times(run_dir)
    assert {k: after[k] for k in before} == before  # nothing finished before the failure was recomputed

    self_rewarding_flow(config, output_dir=str(clean))
    for name in ("iter-2/pairs/preference_seq.memmap.npy", "iter-2/checkpoint/model/model.safetensors"):
        assert sha256_file(run_dir / name) == sha256_file(clean / config.run_name / name), name

    # The resumed run reused its MLflow runs: one parent, one child per stage, no repeated rows.
    tracker = Tracker(default_tracking_uri(interrupted), config.tracking.experiment)
    client = MlflowClient(default_tracking_uri(interrupted))
    parents = client.search_runs([tracker.experiment_id], "tags.`selfreward.stage` = 'pipeline'")
    assert len(parents) == 1 and sorted(tracker.stage_runs(config.run_name)) == sorted(STAGES)
    for key in client.get_run(parents[0].info.run_id).data.metrics:
        steps = [m.step for m in client.get_metric_history(parents[0].info.run_id, key)]
        assert len(steps) == len(set(steps)), key
