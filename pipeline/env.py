"""Environment defaults every entry point applies before Prefect, MLflow or torch start.

Variables the user already set win. Nothing here runs at import time: `selfreward` (`cli.main`),
the flow and the benchmark scripts call `apply_env_defaults()` first thing.
"""

import os

ENV_DEFAULTS = {
    # Offline hygiene: no telemetry, no hub lookups, and a generous start-up budget for Prefect's
    # local server on a busy machine.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # MLflow's own HTTP retries (7, back-off factor 2, 120 s timeout) can block one call for minutes;
    # pipeline.tracking retries whole calls itself, so MLflow's layer stays short.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    # libgomp's default busy-wait made one decode step 170-890 ms instead of 29 ms on 2 shared
    # cores; passive waiting costs a little on an idle machine and avoids that. Only effective
    # before torch loads OpenMP.
    "OMP_WAIT_POLICY": "PASSIVE",
}


def apply_env_defaults() -> None:
    """Set every `ENV_DEFAULTS` variable the environment does not already set."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
