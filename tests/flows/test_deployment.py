"""End to end as a user deploys it: a real `prefect server`, a real `mlflow server`, `prefect deploy`
of the repo's prefect.yaml, a process worker, and `prefect deployment run --watch` of the nightly
deployment twice in a row (the second night continues the run by one iteration)."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking import Tracker
from tests.flows.conftest import TINY
from tests.servers import BIN, free_port, start, stop, wait_http

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    store = tmp_path_factory.mktemp("mlflow-server")
    prefect_port, mlflow_port = free_port(), free_port()
    base_env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    prefect_env = {**base_env, "PREFECT_HOME": str(home)}
    prefect = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
                    home / "server.log", prefect_env)
    mlflow = start(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store}/mlflow.db", "--artifacts-destination", str(store / "artifacts")],
        store / "server.log", {**base_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    try:
        wait_http(f"http://127.0.0.1:{prefect_port}/api/health", prefect, home / "server.log")
        wait_http(f"http://127.0.0.1:{mlflow_port}/health", mlflow, store / "server.log")
        yield {
            "env": {
                **prefect_env,
                "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
                "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
                "SELFREWARD_PROJECT_DIR": str(REPO),
                "PREFECT_WORKER_QUERY_SECONDS": "1",
                "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            },
            "home": home,
        }
    finally:
        stop(prefect)
        stop(mlflow)


def test_prefect_deploy_worker_run_lands_in_mlflow_server(servers, tmp_path):
    env = servers["env"]
    run = lambda *args, timeout=120: subprocess.run(  # noqa: E731
        [str(BIN / "prefect"), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    created = run("work-pool", "create", "selfreward-process", "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = run("--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    worker = start([str(BIN / "prefect"), "worker", "start", "--pool", "selfreward-process", "--limit", "1"],
                   tmp_path / "worker.log", env, cwd=REPO)
    try:
        # The nightly deployment twice in a row, as its schedule starts it (its own `more_iterations: 1`),
        # on a tiny config in a temporary folder: the first night runs SFT and iterations=1, the second
        # continues the finished run with iter-2.
        params = {"output_dir": str(tmp_path / "runs"), "overrides": TINY + ["run_name=deployed", "iterations=1"]}
        for night in (1, 2):
            watched = run("deployment", "run", "selfreward/nightly", "--params", json.dumps(params),
                          "--watch", "--watch-interval", "1", "--watch-timeout", "500", timeout=560)
            log = (tmp_path / "worker.log").read_text()[-4000:]
            assert watched.returncode == 0, f"night {night}: " + watched.stdout[-3000:] + watched.stderr[-3000:] + log
            assert "Completed" in watched.stdout
    finally:
        stop(worker)

    tracker = Tracker(env["MLFLOW_TRACKING_URI"], "selfreward")
    parent = tracker.find_pipeline("deployed")
    assert parent is not None
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    assert client.get_run(parent).info.status == "FINISHED"
    assert sorted(tracker.stage_runs("deployed")) == ["iter-1", "iter-2", "sft"]
    assert "prefect.flow_run_id" in client.get_run(parent).data.tags
    assert client.get_run(parent).data.tags["selfreward.iterations"] == "2"
    assert client.get_model_version_by_alias("deployed-policy", "iter-2").version
    assert client.get_model_version_by_alias("deployed-policy", "champion").version
