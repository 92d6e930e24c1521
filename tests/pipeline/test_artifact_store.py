"""A local sqlite store keeps no absolute path: its artifacts go through `mlflow-artifacts:/`, resolved to
`mlartifacts/` beside the sqlite file, so a copied output folder reads back everything it logged."""

import shutil
import tomllib
from importlib import import_module
from pathlib import Path

from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository
from mlflow.tracking import MlflowClient

from pipeline.artifact_store import local_or_proxied_repository, register_resolver
from pipeline.tracking import Tracker, portable_paths

REPO = Path(__file__).resolve().parents[2]


def test_artifacts_of_a_moved_store_are_found_in_its_new_place(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    tracker = Tracker(f"sqlite:///{old / 'mlflow.db'}", "selfreward")
    assert tracker.client.get_experiment(tracker.experiment_id).artifact_location == "mlflow-artifacts:/"
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    (tmp_path / "notes.txt").write_text("hello")
    tracker.log_artifact(run_id, tmp_path / "notes.txt", "summary")
    assert (old / "mlartifacts" / run_id / "artifacts" / "summary" / "notes.txt").read_text() == "hello"
    assert tracker.client.get_run(run_id).info.artifact_uri == f"mlflow-artifacts:/{run_id}/artifacts"

    shutil.copytree(old, new)
    shutil.rmtree(old)
    moved = MlflowClient(f"sqlite:///{new / 'mlflow.db'}")
    assert [a.path for a in moved.list_artifacts(run_id, "summary")] == ["summary/notes.txt"]
    local = moved.download_artifacts(run_id, "summary/notes.txt", str(tmp_path))
    assert Path(local).read_text() == "hello"


def test_the_resolver_defers_to_mlflow_through_a_server():
    register_resolver()  # what the installed entry point does in every process
    assert isinstance(local_or_proxied_repository("mlflow-artifacts:/1/a", "http://127.0.0.1:5000"),
                      MlflowArtifactsRepository)
    local = get_artifact_repository("mlflow-artifacts:/1/a", tracking_uri="sqlite:////data/out/mlflow.db")
    assert isinstance(local, LocalArtifactRepository) and local.artifact_dir == "/data/out/mlartifacts/1/a"


def test_the_entry_point_names_the_resolver():
    entry = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["mlflow.artifact_repository"]
    module, _, name = entry["mlflow-artifacts"].partition(":")
    assert getattr(import_module(module), name) is local_or_proxied_repository


def test_params_hold_paths_relative_to_the_output_folder(tmp_path):
    (tmp_path / "configs").mkdir()
    template = tmp_path / "configs" / "judge.yaml"
    template.write_text("x")
    values = {"judge": {"template": str(template), "reward_fn": "m:f"}, "files": [str(template)], "n": 3,
              "missing": "/no/such/file"}
    assert portable_paths(values, tmp_path / "runs") == {
        "judge": {"template": "../configs/judge.yaml", "reward_fn": "m:f"}, "files": ["../configs/judge.yaml"],
        "n": 3, "missing": "/no/such/file"}
