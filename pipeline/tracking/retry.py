"""Retrying MLflow calls: a tracking server that goes away is retried with exponential back-off.

Only the outermost call of nested tracking methods retries, so waits never multiply. One outage
spends one retry budget per process: once a store is declared unreachable, every later call to it
in the process (the last curve points, marking runs failed, other Trackers) fails at once until a
call gets through, so a run stops `retries` back-offs after the store went away, not a multiple of
that.
"""

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import requests
from mlflow.exceptions import MlflowException

__all__ = ["UNREACHABLE", "TrackingUnavailableError", "retrying"]

_MAX_BACKOFF_SECONDS = 30.0
# Error codes of a server that is overloaded or restarting, not of a bad request.
_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "SERVICE_UNDER_MAINTENANCE"}
_TRANSIENT_TEXT = ("failed with exception", "failed with timeout exception", "database is locked")
logger = logging.getLogger("pipeline.tracking")

# Tracking URI -> the message that declared it unreachable in this process (see the module docstring).
UNREACHABLE: dict[str, str] = {}


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


def retrying(method: Callable) -> Callable:
    """Retry a method of a Tracker (or of an object holding one as `.tracker`) on connection errors,
    with exponential back-off; a store already declared unreachable gets one attempt."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        tracker = getattr(self, "tracker", self)
        if getattr(tracker._local, "depth", 0):
            return method(self, *args, **kwargs)
        start, delay = time.monotonic(), tracker.retry_backoff_seconds
        retries = 0 if tracker.tracking_uri in UNREACHABLE else tracker.retries
        for attempt in range(retries + 1):
            tracker._local.depth = 1
            try:
                result = method(self, *args, **kwargs)
                UNREACHABLE.pop(tracker.tracking_uri, None)
                return result
            except Exception as err:
                if not _is_transient(err):
                    raise
                last = err
            finally:
                tracker._local.depth = 0
            tracker.forget_logged_steps()  # a batch may or may not have landed: ask the store again
            if attempt < retries:
                logger.warning("MLflow %s: %s failed (%s); retry %d/%d in %.1f s", tracker.tracking_uri,
                               method.__name__.lstrip("_"), _describe(last), attempt + 1, retries, delay)
                time.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF_SECONDS)
        message = UNREACHABLE.get(tracker.tracking_uri) or (
            f"MLflow tracking store {tracker.tracking_uri} is unreachable ({retries + 1} attempts over "
            f"{time.monotonic() - start:.0f} s; last error: {_describe(last)}). Start the tracking server again "
            f"(or fix MLFLOW_TRACKING_URI) and run the same command: the run resumes where it stopped and "
            f"nothing is logged twice")
        UNREACHABLE[tracker.tracking_uri] = message
        raise TrackingUnavailableError(message) from last

    return wrapper
