"""Entry points set offline and speed defaults without overriding what the user set."""

from pipeline.env import ENV_DEFAULTS, apply_env_defaults


def test_defaults_fill_gaps_and_never_override(monkeypatch):
    for key in ENV_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    apply_env_defaults()
    import os

    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true" and os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
