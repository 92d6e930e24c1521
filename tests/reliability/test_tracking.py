"""The Tracker's own retries: bounded exponential back-off on connection errors, no retry of a
request the store rejected. (The real server killed mid-run is in test_crash_resume.py.)"""

import time

import pytest
from mlflow.exceptions import MlflowException

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
