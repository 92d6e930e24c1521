"""All MLflow code of the project: one parent run per pipeline run, one child run per stage.

Runs are found again by tags (`selfreward.run_name`, `selfreward.stage`), so a resumed pipeline
reuses its runs instead of adding rows. Every call names its run id explicitly (`MlflowClient`),
because MLflow's "active run" is thread-local and Prefect may run steps in other threads.

A tracking server that goes away is retried with exponential back-off (`retries`, bounded); every
public method is idempotent (find-or-create, skip what is already logged), so retrying a whole
method never duplicates a run, a param, a metric row or a model version. When the server stays
away, `TrackingUnavailableError` names the tracking URI.
"""

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.metric_buffer import MetricBuffer

TAG_RUN_NAME = "selfreward.run_name"
TAG_STAGE = "selfreward.stage"
TAG_CONFIG = "selfreward.config_fingerprint"
TAG_PARENT = "mlflow.parentRunId"
TAG_OUTCOME = "selfreward.outcome"
PARENT_STAGE = "pipeline"
_PARAM_MAX_CHARS = 6000  # MLflow's limit for one param value
_TAG_MAX_CHARS = 1000  # well under MLflow's limit; an outcome is a sentence, not a traceback
_BATCH = 100  # MLflow accepts at most 100 params per log_batch
_METRIC_BATCH = 1000  # ... and at most 1000 metrics
_MAX_BACKOFF_SECONDS = 30.0
# Error codes of a server that is overloaded or restarting, not of a bad request.
_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "SERVICE_UNDER_MAINTENANCE"}
_TRANSIENT_TEXT = ("failed with exception", "failed with timeout exception", "database is locked")
logger = logging.getLogger(__name__)


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking store could not be reached through all retries."""


def _is_transient(err: BaseException) -> bool:
    if isinstance(err, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    if isinstance(err, MlflowException):
        # Connection refused / reset / timeouts surface as "API request to <url> failed with exception".
        return err.error_code in _TRANSIENT_CODES or any(text in str(err) for text in _TRANSIENT_TEXT)
    return False


def _describe(err: BaseException) -> str:
    """The gist of a connection error (urllib3's own text is several hundred characters)."""
    text = str(err)
    for needle, gist in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                         ("Name or service not known", "unknown host"), ("database is locked", "database is locked")):
        if needle in text:
            return gist
    return text[:200]


def _retrying(method: Callable) -> Callable:
    """Retry a Tracker method on connection errors with exponential back-off; only the outermost
    call of nested Tracker methods retries, so waits never multiply."""

    @functools.wraps(method)
    def wrapper(self: "Tracker", *args: Any, **kwargs: Any) -> Any:
        if getattr(self._local, "depth", 0):
            return method(self, *args, **kwargs)
        start, delay = time.monotonic(), self.retry_backoff_seconds
        for attempt in range(self.retries + 1):
            self._local.depth = 1
            try:
                return method(self, *args, **kwargs)
            except Exception as err:
                if not _is_transient(err):
                    raise
                last = err
            finally:
                self._local.depth = 0
            self._last_step.clear()  # a batch may or may not have landed: ask the store again
            self._known_keys.clear()
            if attempt < self.retries:
                logger.warning("MLflow %s: %s failed (%s); retry %d/%d in %.1f s", self.tracking_uri,
                               method.__name__.lstrip("_"), _describe(last), attempt + 1, self.retries, delay)
                time.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF_SECONDS)
        raise TrackingUnavailableError(
            f"MLflow tracking store {self.tracking_uri} is unreachable ({self.retries + 1} attempts over "
            f"{time.monotonic() - start:.0f} s; last error: {_describe(last)}). Start the tracking server again "
            f"(or fix MLFLOW_TRACKING_URI) and run the same command: the run resumes where it stopped and "
            f"nothing is logged twice"
        ) from last

    return wrapper


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

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        artifact_root: Path | None = None,
        *,
        retries: int = 5,
        retry_backoff_seconds: float = 2.0,
    ):
        """Connect to `tracking_uri` and find or create `experiment`.

        Args:
            tracking_uri: MLflow tracking URI (a server URL or a sqlite store).
            experiment: Experiment name.
            artifact_root: Artifact folder of a new experiment in a local sqlite store.
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
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._experiment(experiment, artifact_root)

    @classmethod
    def from_config(cls, tracking_uri: str, tracking: Any, artifact_root: Path | None = None) -> "Tracker":
        """A Tracker with the experiment and retry settings of a config's `tracking` section."""
        return cls(tracking_uri, tracking.experiment, artifact_root, retries=tracking.retries,
                   retry_backoff_seconds=tracking.retry_backoff_seconds)

    @_retrying
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

    @_retrying
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
        else:
            self.client.update_run(run_id, status="RUNNING")
            self.set_tags(run_id, tags)
        self.log_params(run_id, config)  # only the missing ones: a start cut off mid-way is completed
        return run_id

    @_retrying
    def stage_run(self, parent_id: str, run_name: str, stage: str, tags: Mapping[str, str] | None = None) -> str:
        """The child run of one stage (`sft`, `iter-1`, ...), reopened or created under the parent."""
        run_id = self._find(run_name, stage)
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

    @_retrying
    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    @_retrying
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        existing = self.client.get_run(run_id).data.params
        new = [Param(k, v) for k, v in flatten(params).items() if k not in existing]
        for i in range(0, len(new), _BATCH):
            self.client.log_batch(run_id, params=new[i : i + _BATCH])

    @_retrying
    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """Log metrics at `step`, skipping (key, step) rows already logged: a resumed or retried
        step replays the same deterministic values, and MLflow would store them twice."""
        self.log_metric_steps(run_id, [(step, metrics)])

    @_retrying
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

    @_retrying
    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]

    @_retrying
    def stage_metrics(self, run_id: str) -> dict[int, dict[str, float]]:
        """{step: {metric: value}} of every metric of a run (the parent's per-stage summaries)."""
        by_step: dict[int, dict[str, float]] = {}
        for key in self.client.get_run(run_id).data.metrics:
            for step, value in self.metric_history(run_id, key):
                by_step.setdefault(step, {})[key] = value
        return by_step

    @_retrying
    def find_pipeline(self, run_name: str) -> str | None:
        return self._find(run_name, PARENT_STAGE)

    @_retrying
    def latest_pipeline_name(self) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{TAG_STAGE}` = '{PARENT_STAGE}'",
            max_results=1, order_by=["attributes.start_time DESC"],
        )
        return runs[0].data.tags[TAG_RUN_NAME] if runs else None

    @_retrying
    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    @_retrying
    def has_artifact(self, run_id: str, artifact_path: str) -> bool:
        parent, _, name = artifact_path.rpartition("/")
        return any(Path(f.path).name == name for f in self.client.list_artifacts(run_id, parent or None))

    @_retrying
    def register_checkpoint(self, run_id: str, checkpoint_dir: Path, model_name: str, alias: str) -> str:
        """Copy a checkpoint into the run's artifacts and register it as a model version with alias
        `alias`; idempotent on resume (one version per run). MLflow reserves `latest` itself:
        `models:/<name>/latest` always resolves to the newest version."""
        if not self._artifacts_match(run_id, Path(checkpoint_dir), "checkpoint"):
            self.log_artifact(run_id, checkpoint_dir, "checkpoint")  # also completes a cut-off upload
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

    def _artifacts_match(self, run_id: str, local: Path, artifact_path: str) -> bool:
        """True when every file under `local` is stored under `artifact_path` with the same size."""
        stored = {}
        pending = [artifact_path]
        while pending:
            for info in self.client.list_artifacts(run_id, pending.pop()):
                if info.is_dir:
                    pending.append(info.path)
                else:
                    stored[info.path] = info.file_size
        wanted = {f"{artifact_path}/{p.relative_to(local).as_posix()}": p.stat().st_size
                  for p in local.rglob("*") if p.is_file()}
        return all(stored.get(path) == size for path, size in wanted.items())

    @_retrying
    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def fail(self, run_id: str, reason: str) -> None:
        """Mark a run FAILED with `selfreward.outcome = failed: <reason>`, once, without retries: the
        run is already failing, possibly because the store is what went away."""
        try:
            self.client.log_batch(run_id, tags=[RunTag(TAG_OUTCOME, f"failed: {reason}"[:_TAG_MAX_CHARS])])
            self.client.set_terminated(run_id, status="FAILED")
        except Exception as err:  # best effort by design: the original error is what gets raised
            logger.warning("could not mark MLflow run %s as failed: %s", run_id, str(err)[:200])

    @_retrying
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
