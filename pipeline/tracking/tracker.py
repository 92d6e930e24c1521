"""The Tracker: one parent MLflow run per pipeline run, one child run per stage.

Runs are found again by tags, so a resumed pipeline reuses its runs instead of adding rows: the
parent by the run's identity (`selfreward.run_uid`, a random id kept in the run folder, see
`pipeline.rundir`), each child by its parent and stage. A run name or registered model that another
run (another folder) already uses on the same tracking server is refused (`RunIdentityError`), so a
run never reopens, reports or re-aliases another run's runs and weights. Every call names its run id
explicitly (`MlflowClient`), because MLflow's "active run" is thread-local and Prefect may run steps
in other threads.

Every public method is idempotent (find-or-create, skip what is already logged) and retried on
connection errors (`pipeline.tracking.retry`), so retrying a whole method never duplicates a run, a
param, a metric row or a model version.
"""

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from pipeline.artifact_store import LOCATION, local_artifact_root, register_resolver
from pipeline.metric_buffer import MetricBuffer
from pipeline.tracking.retry import UNREACHABLE, retrying

TAG_RUN_NAME = "selfreward.run_name"
TAG_STAGE = "selfreward.stage"
TAG_CONFIG = "selfreward.config_fingerprint"
TAG_PARENT = "mlflow.parentRunId"
TAG_OUTCOME = "selfreward.outcome"
TAG_IDENTITY = "selfreward.run_uid"
TAG_LOCATION = "selfreward.run_dir"
PARENT_STAGE = "pipeline"
_PARAM_MAX_CHARS = 6000  # MLflow's limit for one param value
_TAG_MAX_CHARS = 1000  # well under MLflow's limit; an outcome is a sentence, not a traceback
_BATCH = 100  # MLflow accepts at most 100 params per log_batch
_METRIC_BATCH = 1000  # ... and at most 1000 metrics
logger = logging.getLogger("pipeline.tracking")


class RunIdentityError(ValueError):
    """The run name or registered model belongs to another run (another run folder) on this tracking server."""


def registered_model_name(run_name: str, registered_model: str | None) -> str:
    """The registry name of a run's checkpoints: `tracking.registered_model`, default `<run_name>-policy`."""
    return registered_model or f"{run_name}-policy"


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


def portable_paths(values: Any, base: Path) -> Any:
    """`values` (a config dump) with every absolute path of an existing file or folder written relative
    to `base`, the output folder: the params of a run then still point at its inputs when the output
    folder moves together with them, and never at another machine's layout."""
    if isinstance(values, Mapping):
        return {key: portable_paths(value, base) for key, value in values.items()}
    if isinstance(values, list):
        return [portable_paths(value, base) for value in values]
    if isinstance(values, str) and os.path.isabs(values) and os.path.exists(values):
        return os.path.relpath(values, base)
    return values


class Tracker:
    """Parent/child MLflow runs for one pipeline run, resumable by tags."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        *,
        retries: int = 5,
        retry_backoff_seconds: float = 2.0,
    ):
        """Connect to `tracking_uri` and find or create `experiment`.

        Args:
            tracking_uri: MLflow tracking URI (a server URL or a sqlite store).
            experiment: Experiment name. Created in a local sqlite store, its artifact location is
                `mlflow-artifacts:/`: `mlartifacts/` beside the sqlite file, wherever it is now
                (`pipeline.artifact_store`).
            retries: Retries of a call that failed to reach the store (0: fail at once).
            retry_backoff_seconds: First wait between retries; doubles each time, at most 30 s.

        Raises:
            TrackingUnavailableError: the store stayed unreachable through every retry.
        """
        self.tracking_uri = tracking_uri
        self.retries, self.retry_backoff_seconds = retries, retry_backoff_seconds
        self._local = threading.local()
        self._last_step: dict[tuple[str, str], int] = {}  # (run, metric key) -> last step stored
        self._known_keys: dict[str, set[str]] = {}  # run -> metric keys it had when first seen
        self._moved: tuple[str, str] | None = None  # see _moved_artifacts
        register_resolver()
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._experiment(experiment)

    def forget_logged_steps(self) -> None:
        """Ask the store again which metric steps it holds (after a call that may or may not have landed)."""
        self._last_step.clear()
        self._known_keys.clear()

    @classmethod
    def from_config(cls, tracking_uri: str, tracking: Any) -> "Tracker":
        """A Tracker with the experiment and retry settings of a config's `tracking` section."""
        return cls(tracking_uri, tracking.experiment, retries=tracking.retries,
                   retry_backoff_seconds=tracking.retry_backoff_seconds)

    @retrying
    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            self._moved = self._moved_artifacts(found.artifact_location)
            return found.experiment_id
        # A local sqlite store keeps its artifacts beside it, with no absolute path in the store, so
        # the output folder can move; a tracking server chooses its own location (its artifact proxy).
        location = LOCATION if local_artifact_root(self.tracking_uri) else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created concurrently by another process
            return self.client.get_experiment_by_name(name).experiment_id

    def _search(self, filter_string: str, max_results: int = 1000) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=max_results,
                                       order_by=["attributes.start_time DESC"])

    def _find(self, run_name: str, stage: str) -> str | None:
        runs = self._search(f"tags.`{TAG_RUN_NAME}` = '{run_name}' and tags.`{TAG_STAGE}` = '{stage}'", 1)
        return runs[0].info.run_id if runs else None

    def _child(self, parent_id: str, stage: str) -> str | None:
        runs = self._search(f"tags.`{TAG_PARENT}` = '{parent_id}' and tags.`{TAG_STAGE}` = '{stage}'", 1)
        return runs[0].info.run_id if runs else None

    @retrying
    def claim(self, run_name: str, identity: str, *, legacy: bool = False,
              registered_model: str | None = None) -> str | None:
        """The parent run of the run `identity` (None before it has one), after checking that no other
        run uses `run_name` in this experiment or has versions in `registered_model`. Writes nothing.

        Args:
            run_name: the run's name.
            identity: the run's id (`selfreward.run_uid`).
            legacy: the run predates identities; the newest untagged parent of its name is its own.
            registered_model: the registry name its checkpoints go to (None: not registered).

        Raises:
            RunIdentityError: naming the other run's folder (or MLflow run) and how to proceed.
        """
        parents = self._search(f"tags.`{TAG_RUN_NAME}` = '{run_name}' and tags.`{TAG_STAGE}` = '{PARENT_STAGE}'")
        ours = [p for p in parents if p.data.tags.get(TAG_IDENTITY) == identity]
        if not ours and legacy:
            ours = [p for p in parents if TAG_IDENTITY not in p.data.tags][:1]
        mine = {p.info.run_id for p in ours}
        other = next((p for p in parents if p.info.run_id not in mine), None)
        if other is not None:
            where = other.data.tags.get(TAG_LOCATION) or f"MLflow run {other.info.run_id}"
            raise RunIdentityError(
                f"run name {run_name!r} is already used in MLflow experiment {self.experiment_id} at {self.tracking_uri} "
                f"by another run ({where}); this run is not it, so it would report that run's numbers. Use another "
                f"run_name (--set run_name=<new name>) or tracking.experiment, or delete that run in MLflow")
        parent = ours[0].info.run_id if ours else None
        if registered_model:
            self._check_versions(registered_model, parent)
        return parent

    def _check_versions(self, model_name: str, parent: str | None) -> None:
        versions = self.client.search_model_versions(f"name = '{model_name}'")
        children = {r.info.run_id for r in self._search(f"tags.`{TAG_PARENT}` = '{parent}'")} if parent else set()
        foreign = sorted({v.run_id for v in versions} - children, key=str)
        if foreign:
            raise RunIdentityError(
                f"registered model {model_name!r} at {self.tracking_uri} already holds versions of another run "
                f"(MLflow run {foreign[0]}); its aliases would then point at either run's weights. Set "
                f"tracking.registered_model to another name, or use another run_name")

    @retrying
    def start_pipeline(self, run_name: str, config: Mapping[str, Any], fingerprint: str, tags: Mapping[str, str],
                       *, identity: str | None = None, location: str | None = None, legacy: bool = False,
                       registered_model: str | None = None) -> str:
        """The parent run of this run, reopened when it exists, created (with params) otherwise.

        With `identity`, the parent is this run's own (`claim`; raises `RunIdentityError` when the name
        or registered model is another run's), and it is tagged with the identity and `location` (the
        run folder). Without, the newest parent named `run_name` is reopened.
        """
        if identity is None:
            run_id = self._find(run_name, PARENT_STAGE)
        else:
            run_id = self.claim(run_name, identity, legacy=legacy, registered_model=registered_model)
        own = {TAG_IDENTITY: identity, TAG_LOCATION: location or ""} if identity else {}
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=run_name,
                tags={TAG_RUN_NAME: run_name, TAG_STAGE: PARENT_STAGE, TAG_CONFIG: fingerprint, **own, **tags},
            )
            run_id = run.info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
            self.set_tags(run_id, {**own, **tags})  # tags an adopted parent of a legacy run too
        self.log_params(run_id, config)  # only the missing ones: a start cut off mid-way is completed
        return run_id

    @retrying
    def stage_run(self, parent_id: str, run_name: str, stage: str, tags: Mapping[str, str] | None = None) -> str:
        """The child run of one stage (`sft`, `iter-1`, ...), reopened or created under the parent."""
        run_id = self._child(parent_id, stage)
        if run_id is None:
            all_tags = {TAG_RUN_NAME: run_name, TAG_STAGE: stage, TAG_PARENT: parent_id, **(tags or {})}
            return self.client.create_run(self.experiment_id, run_name=stage, tags=all_tags).info.run_id
        self.client.update_run(run_id, status="RUNNING")
        self.set_tags(run_id, tags or {})
        return run_id

    @contextmanager
    def stage(self, parent_id: str, run_name: str, stage: str, tags: Mapping[str, str] | None = None) -> Iterator[str]:
        """The child run of one stage (see `stage_run`) for the duration of a block; an exception
        leaving the block marks the run FAILED with its message (`fail`) and propagates."""
        run_id = self.stage_run(parent_id, run_name, stage, tags)
        with self.failing(run_id):
            yield run_id

    @contextmanager
    def failing(self, run_id: str) -> Iterator[str]:
        """Mark `run_id` FAILED when an exception leaves the block, then let it propagate."""
        try:
            yield run_id
        except BaseException as err:
            self.fail(run_id, f"{type(err).__name__}: {err}")
            raise

    @retrying
    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    @retrying
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        existing = self.client.get_run(run_id).data.params
        new = [Param(k, v) for k, v in flatten(params).items() if k not in existing]
        for i in range(0, len(new), _BATCH):
            self.client.log_batch(run_id, params=new[i : i + _BATCH])

    @retrying
    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """Log metrics at `step`, skipping (key, step) rows already logged: a resumed or retried
        step replays the same deterministic values, and MLflow would store them twice."""
        self.log_metric_steps(run_id, [(step, metrics)])

    @retrying
    def log_metric_steps(self, run_id: str, steps: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        """Log several steps' metrics in as few requests as MLflow allows, like `log_metrics`."""
        now = int(time.time() * 1000)
        rows = [Metric(key, float(value), now, step) for step, metrics in steps for key, value in metrics.items()
                if value is not None and step > self._logged_up_to(run_id, key)]
        for i in range(0, len(rows), _METRIC_BATCH):
            self.client.log_batch(run_id, metrics=rows[i : i + _METRIC_BATCH])
            for row in rows[i : i + _METRIC_BATCH]:  # only once they are stored: a failed batch is sent again
                self._last_step[(run_id, row.key)] = max(row.step, self._last_step[(run_id, row.key)])

    def buffered_metrics(self, run_id: str, flush_every_seconds: float) -> "MetricBuffer":
        """A `log_fn` for training loops that writes to MLflow at most every `flush_every_seconds`."""
        return MetricBuffer(self, run_id, flush_every_seconds)

    def _logged_up_to(self, run_id: str, key: str) -> int:
        if run_id not in self._known_keys:  # one request tells which keys need their history read
            self._known_keys[run_id] = set(self.client.get_run(run_id).data.metrics)
        if (run_id, key) not in self._last_step:
            history = self.client.get_metric_history(run_id, key) if key in self._known_keys[run_id] else []
            self._last_step[(run_id, key)] = max((m.step for m in history), default=-1)
        return self._last_step[(run_id, key)]

    @retrying
    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]

    @retrying
    def stage_metrics(self, run_id: str) -> dict[int, dict[str, float]]:
        """{step: {metric: value}} of every metric of a run (the parent's per-stage summaries)."""
        by_step: dict[int, dict[str, float]] = {}
        for key in self.client.get_run(run_id).data.metrics:
            for step, value in self.metric_history(run_id, key):
                by_step.setdefault(step, {})[key] = value
        return by_step

    @retrying
    def find_pipeline(self, run_name: str) -> str | None:
        return self._find(run_name, PARENT_STAGE)

    @retrying
    def latest_pipeline_name(self) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{TAG_STAGE}` = '{PARENT_STAGE}'",
            max_results=1, order_by=["attributes.start_time DESC"],
        )
        return runs[0].data.tags[TAG_RUN_NAME] if runs else None

    def _moved_artifacts(self, location: str) -> tuple[str, str] | None:
        """(stored, real) artifact root when a sqlite store made before artifact locations were
        `mlflow-artifacts:/` moved with its output folder: such an experiment keeps the absolute
        `file://` location it was created with, so the run would write into the old folder."""
        if not (self.tracking_uri.startswith("sqlite:///") and location.startswith("file:")):
            return None
        here = (Path(self.tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        location = location.rstrip("/")
        return (location, here) if location.endswith("/mlartifacts") and location != here else None

    def _artifact_uri(self, run_id: str) -> str:
        uri = self.client.get_run(run_id).info.artifact_uri
        if self._moved and uri.startswith(self._moved[0]):
            return self._moved[1] + uri[len(self._moved[0]):]
        return uri

    def _artifacts(self, run_id: str):
        """The run's artifact repository, resolved against this tracker's store each time: MLflow's
        client caches one per run id for the whole process, so after a run's output folder moves, a
        second run in the same process (the flow API, tests) would still write into the old folder."""
        return get_artifact_repository(self._artifact_uri(run_id), tracking_uri=self.tracking_uri)

    @retrying
    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        path, repo = Path(path), self._artifacts(run_id)
        (repo.log_artifacts if path.is_dir() else repo.log_artifact)(str(path), artifact_path)

    def _list(self, run_id: str, path: str | None) -> list:
        return self._artifacts(run_id).list_artifacts(path)

    @retrying
    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def fail(self, run_id: str, reason: str) -> None:
        """Mark a run FAILED with `selfreward.outcome = failed: <reason>`, once, without retries: the
        run is already failing, possibly because the store is what went away (then not at all)."""
        if self.tracking_uri in UNREACHABLE:
            logger.warning("MLflow run %s not marked as failed: the store is unreachable", run_id)
            return
        try:
            self.client.log_batch(run_id, tags=[RunTag(TAG_OUTCOME, f"failed: {reason}"[:_TAG_MAX_CHARS])])
            self.client.set_terminated(run_id, status="FAILED")
        except Exception as err:  # best effort by design: the original error is what gets raised
            logger.warning("could not mark MLflow run %s as failed: %s", run_id, str(err)[:200])

    @retrying
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
