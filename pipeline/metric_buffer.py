"""Training curves sent to MLflow in batches (`Tracker.buffered_metrics`), not one request per step."""

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.tracking import Tracker

__all__ = ["MetricBuffer"]

logger = logging.getLogger(__name__)


class MetricBuffer:
    """Training-step metrics sent to MLflow in batches, at most every `flush_every_seconds`.

    Each `log_batch` is a commit in a sqlite store (about 10 ms) or an HTTP request, so one per
    optimizer step costs more than a small model's step; the curves still reach the MLflow UI
    while the step runs, `flush_every_seconds` late at most. Call `flush()` (or leave the `with`
    block) when training ends, also when it fails, so no logged step is lost.
    """

    def __init__(self, tracker: "Tracker", run_id: str, flush_every_seconds: float) -> None:
        self.tracker, self.run_id, self.flush_every_seconds = tracker, run_id, flush_every_seconds
        self._pending: list[tuple[int, dict[str, float]]] = []
        self._last_flush = time.monotonic()

    def __call__(self, metrics: Mapping[str, float], step: int) -> None:
        self._pending.append((step, dict(metrics)))
        if time.monotonic() - self._last_flush >= self.flush_every_seconds:
            self.flush()

    def flush(self) -> None:
        """Send every pending step now."""
        if self._pending:
            self.tracker.log_metric_steps(self.run_id, self._pending)
            self._pending = []
        self._last_flush = time.monotonic()

    def __enter__(self) -> "MetricBuffer":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.flush()
            return
        try:  # training already failed: report that error, not a second one from MLflow
            self.flush()
        except Exception as err:
            logger.warning("MLflow: could not send the last training metrics of run %s: %s", self.run_id, err)
