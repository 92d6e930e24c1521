"""All MLflow code of the project: one parent run per pipeline run, one child run per stage.

Runs are found again by tags (`selfreward.run_name`, `selfreward.stage`), so a resumed pipeline
reuses its runs instead of adding rows. Every call names its run id explicitly (`MlflowClient`),
because MLflow's "active run" is thread-local and Prefect may run steps in other threads.
"""

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

TAG_RUN_NAME = "selfreward.run_name"
TAG_STAGE = "selfreward.stage"
TAG_CONFIG = "selfreward.config_fingerprint"
TAG_PARENT = "mlflow.parentRunId"
PARENT_STAGE = "pipeline"
_PARAM_MAX_CHARS = 6000  # MLflow's limit for one param value
_BATCH = 100  # MLflow accepts at most 100 params per log_batch


def default_tracking_uri(output_dir: str | Path) -> str:
    """`MLFLOW_TRACKING_URI` when set, else a sqlite store under the output directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {"a.b.c": "value"} for MLflow params."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:_PARAM_MAX_CHARS]
    return flat


class Tracker:
    """Parent/child MLflow runs for one pipeline run, resumable by tags."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path | None = None):
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._experiment(experiment, artifact_root)
        self._last_step: dict[tuple[str, str], int] = {}

    def _experiment(self, name: str, artifact_root: Path | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        # With a local sqlite store, keep artifacts beside it rather than in the CWD's ./mlruns.
        location = artifact_root.resolve().as_uri() if artifact_root and self.tracking_uri.startswith("sqlite") else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created concurrently by another process
            return self.client.get_experiment_by_name(name).experiment_id

    def _find(self, run_name: str, stage: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_RUN_NAME}` = '{run_name}' and tags.`{TAG_STAGE}` = '{stage}'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        return runs[0].info.run_id if runs else None

    def start_pipeline(self, run_name: str, config: Mapping[str, Any], fingerprint: str, tags: Mapping[str, str]) -> str:
        """The parent run of `run_name`, reopened when it exists, created (with params) otherwise."""
        run_id = self._find(run_name, PARENT_STAGE)
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=run_name,
                tags={TAG_RUN_NAME: run_name, TAG_STAGE: PARENT_STAGE, TAG_CONFIG: fingerprint, **tags},
            )
            run_id = run.info.run_id
            params = [Param(k, v) for k, v in flatten(config).items()]
            for i in range(0, len(params), _BATCH):
                self.client.log_batch(run_id, params=params[i : i + _BATCH])
        else:
            self.client.update_run(run_id, status="RUNNING")
            self.set_tags(run_id, tags)
        return run_id

    def stage_run(self, parent_id: str, run_name: str, stage: str, tags: Mapping[str, str] | None = None) -> str:
        """The child run of one stage (`sft`, `iter-1`, ...), reopened or created under the parent."""
        run_id = self._find(run_name, stage)
        if run_id is None:
            all_tags = {TAG_RUN_NAME: run_name, TAG_STAGE: stage, TAG_PARENT: parent_id, **(tags or {})}
            return self.client.create_run(self.experiment_id, run_name=stage, tags=all_tags).info.run_id
        self.client.update_run(run_id, status="RUNNING")
        self.set_tags(run_id, tags or {})
        return run_id

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        existing = self.client.get_run(run_id).data.params
        new = [Param(k, v) for k, v in flatten(params).items() if k not in existing]
        for i in range(0, len(new), _BATCH):
            self.client.log_batch(run_id, params=new[i : i + _BATCH])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """Log metrics at `step`, skipping (key, step) rows already logged: a resumed or retried
        step replays the same deterministic values, and MLflow would store them twice."""
        now = int(time.time() * 1000)
        rows = []
        for key, value in metrics.items():
            if value is None or step <= self._logged_up_to(run_id, key):
                continue
            rows.append(Metric(key, float(value), now, step))
            self._last_step[(run_id, key)] = step
        if rows:
            self.client.log_batch(run_id, metrics=rows)

    def _logged_up_to(self, run_id: str, key: str) -> int:
        if (run_id, key) not in self._last_step:
            history = self.client.get_metric_history(run_id, key)
            self._last_step[(run_id, key)] = max((m.step for m in history), default=-1)
        return self._last_step[(run_id, key)]

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]

    def stage_metrics(self, run_id: str) -> dict[int, dict[str, float]]:
        """{step: {metric: value}} of every metric of a run (the parent's per-stage summaries)."""
        by_step: dict[int, dict[str, float]] = {}
        for key in self.client.get_run(run_id).data.metrics:
            for step, value in self.metric_history(run_id, key):
                by_step.setdefault(step, {})[key] = value
        return by_step

    def find_pipeline(self, run_name: str) -> str | None:
        return self._find(run_name, PARENT_STAGE)

    def latest_pipeline_name(self) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{TAG_STAGE}` = '{PARENT_STAGE}'",
            max_results=1, order_by=["attributes.start_time DESC"],
        )
        return runs[0].data.tags[TAG_RUN_NAME] if runs else None

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def has_artifact(self, run_id: str, artifact_path: str) -> bool:
        parent, _, name = artifact_path.rpartition("/")
        return any(Path(f.path).name == name for f in self.client.list_artifacts(run_id, parent or None))

    def register_checkpoint(self, run_id: str, checkpoint_dir: Path, model_name: str, alias: str) -> str:
        """Copy a checkpoint into the run's artifacts and register it as a model version with alias
        `alias`; idempotent on resume (one version per run). MLflow reserves `latest` itself:
        `models:/<name>/latest` always resolves to the newest version."""
        if not self.has_artifact(run_id, "checkpoint"):
            self.log_artifact(run_id, checkpoint_dir, "checkpoint")
        try:
            self.client.create_registered_model(model_name)
        except MlflowException:
            pass  # already registered
        existing = self.client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
        if existing:
            version = existing[0].version
        else:
            source = f"{self.client.get_run(run_id).info.artifact_uri}/checkpoint"
            version = self.client.create_model_version(model_name, source, run_id=run_id, tags={"alias": alias}).version
        self.client.set_registered_model_alias(model_name, alias, version)
        return str(version)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def stage_runs(self, run_name: str) -> dict[str, str]:
        """{stage: run_id} of every child run of `run_name`."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{TAG_RUN_NAME}` = '{run_name}'", max_results=1000
        )
        return {r.data.tags[TAG_STAGE]: r.info.run_id for r in runs if r.data.tags.get(TAG_STAGE) != PARENT_STAGE}

    def run_url(self, run_id: str) -> str:
        """A link to the run in the MLflow UI when tracking through a server, else the run id."""
        if self.tracking_uri.startswith("http"):
            return f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}"
        return f"mlflow run {run_id} (open with `selfreward ui`)"
