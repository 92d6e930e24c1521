"""The Tracker's own retries: bounded exponential back-off on connection errors, no retry of a
request the store rejected. (The real server killed mid-run is in test_crash_resume.py.)"""

import logging
import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.tracking import Tracker, TrackingUnavailableError
from tests.servers import free_port


@pytest.mark.reliability(area="MLflow outage", fault="no MLflow server at the tracking URI from the start",
                         expected="3 attempts with 0.2, 0.4 s back-off, then TrackingUnavailableError naming the URI")
def test_unreachable_store_is_retried_with_bounded_backoff(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # only the Tracker's own retries
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError) as err:
        Tracker(uri, "selfreward", retries=2, retry_backoff_seconds=0.2)
    elapsed = time.monotonic() - started
    assert 0.6 <= elapsed < 10  # slept 0.2 + 0.4 s, and not minutes
    assert str(err.value).startswith(f"MLflow tracking store {uri} is unreachable (3 attempts")
    assert "last error: connection refused" in str(err.value)


@pytest.mark.reliability(area="MLflow outage", fault="a request the store rejects (unknown run id)",
                         expected="raised at once, never retried as if the server were away")
def test_rejected_request_is_not_retried(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "selfreward", retries=5, retry_backoff_seconds=10)
    started = time.monotonic()
    with pytest.raises(MlflowException):
        tracker.log_params("0" * 32, {"a": 1})
    assert time.monotonic() - started < 5


@pytest.mark.reliability(area="MLflow outage", fault="store gone while training: buffered curves, the step's own flush on exit, "
                         "marking runs failed, a second Tracker in the same process",
                         expected="one retry budget for the whole outage (3 attempts), then every call fails at once")
def test_one_outage_spends_one_retry_budget(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    caplog.set_level(logging.WARNING, logger="pipeline.tracking")
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "selfreward", retries=2, retry_backoff_seconds=0.2)
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    # The server vanishes after the Tracker connected (the run was mid-DPO when it was killed).
    dead = f"http://127.0.0.1:{free_port()}"
    tracker.tracking_uri, tracker.client = dead, MlflowClient(dead)
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match="is unreachable \\(3 attempts"):
        with tracker.buffered_metrics(run_id, flush_every_seconds=0) as log_fn:
            log_fn({"loss": 1.0}, 1)  # the step's flush: the one budget (0.2 + 0.4 s of back-off)
    budget = time.monotonic() - started  # includes the flush on leaving the block, which must not retry
    tracker.fail(run_id, "TrackingUnavailableError")
    with pytest.raises(TrackingUnavailableError, match="is unreachable \\(3 attempts"):
        Tracker(dead, "selfreward", retries=2, retry_backoff_seconds=0.2)
    total = time.monotonic() - started
    retries = [r.getMessage() for r in caplog.records if "; retry " in r.getMessage()]
    assert [m.split("; ")[-1] for m in retries] == ["retry 1/2 in 0.2 s", "retry 2/2 in 0.4 s"]  # one cycle in all
    assert 0.6 <= budget and total < budget + 1.0, (budget, total)
