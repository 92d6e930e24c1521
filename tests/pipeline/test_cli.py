"""The `selfreward` CLI as a user runs it: run, compare (table, JSON, plot) and ui."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from urllib.parse import quote

import pytest

from tests.flows.conftest import TINY

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "pipeline.cli"]


def cli(*args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME")}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env={**clean, **(env or {})})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    sets = [a for item in TINY + ["iterations=1", "run_name=cli"] for a in ("--set", item)]
    proc = cli("run", "--output", str(out), *sets)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_run_prints_table_plot_and_ui_command(finished_run):
    out, proc = finished_run
    assert "gt_score" in proc.stdout and "iter-1" in proc.stdout
    assert f"selfreward ui --output {out}" in proc.stdout
    assert (out / "cli" / "plots" / "stages.png").is_file()
    assert (out / "prefect").is_dir() and (out / "mlflow.db").is_file()  # all state under --output


def test_rerun_resumes_without_recomputing(finished_run, prefect_harness):
    out, _ = finished_run
    before = (out / "cli" / "iter-1" / "checkpoint" / "manifest.json").stat().st_mtime_ns
    sets = [a for item in TINY + ["iterations=1", "run_name=cli"] for a in ("--set", item)]
    # The session's Prefect server instead of a temporary one under --output: the resume is what is tested.
    proc = cli("run", "--output", str(out), *sets, env={"PREFECT_API_URL": prefect_harness})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "cli" / "iter-1" / "checkpoint" / "manifest.json").stat().st_mtime_ns == before


def test_compare_json_has_one_object_per_stage(finished_run):
    out, _ = finished_run
    proc = cli("compare", "cli", "--output", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["stage"] for r in rows] == ["sft", "iter-1"]
    for key in ("num_pairs", "dpo_reward_accuracy", "gt_score", "gt_success", "judge_pairwise_accuracy",
                "mean_response_length"):
        assert key in rows[1], key
    assert (out / "cli" / "plots" / "compare.png").is_file()
    assert [r["champion"] for r in rows].count(True) == 1 and all(r["promotion"] for r in rows)
    champion = next(r["stage"] for r in rows if r["champion"])
    table = cli("compare", "--output", str(out))  # no name: the most recent run
    assert table.returncode == 0 and table.stdout.splitlines()[0].startswith("stage")
    assert f"champion: {champion} (models:/cli-policy@champion)" in table.stdout


def test_compare_unknown_run_and_missing_store_exit_2(finished_run, tmp_path):
    out, _ = finished_run
    unknown = cli("compare", "nope", "--output", str(out))
    assert unknown.returncode == 2 and "no run named 'nope'" in unknown.stderr
    empty = cli("compare", "--output", str(tmp_path))
    assert empty.returncode == 2 and "no MLflow store" in empty.stderr and "Traceback" not in empty.stderr


def test_same_run_name_with_another_config_is_refused(finished_run):
    out, _ = finished_run
    sets = [a for item in TINY + ["iterations=1", "run_name=cli", "iteration.dpo.beta=0.3"] for a in ("--set", item)]
    proc = cli("run", "--output", str(out), *sets)
    assert proc.returncode == 2
    assert "different config" in proc.stderr and "iteration.dpo.beta" in proc.stderr


def _printed_links(proc: subprocess.Popen) -> dict[str, str]:
    """The `  what: url` lines `selfreward ui` prints before the server's own output."""
    links = {}
    for line in iter(proc.stdout.readline, ""):
        if line.startswith("  ") and ": http" in line:
            what, url = line.strip().split(": ", 1)
            links[what] = url
        elif links:
            return links
    return links


def _get(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        body = r.read()
    return json.loads(body) if path.startswith("/api/2.0/mlflow/") else body


def _run_files(port: int, run_id: str, path: str = "") -> list[str]:
    """Every artifact file of a run, as the UI's artifact browser lists them."""
    listed = _get(port, f"/api/2.0/mlflow/artifacts/list?run_id={run_id}" + (f"&path={quote(path)}" if path else ""))
    files = []
    for entry in listed.get("files", []):
        files += _run_files(port, run_id, entry["path"]) if entry["is_dir"] else [entry["path"]]
    return files


def test_ui_serves_a_moved_store_on_loopback(finished_run):
    """The whole output folder copied elsewhere with the original gone: the UI still lists and serves
    every run artifact and every model version's files (the store holds no absolute path)."""
    from tests.flows.test_deployment import free_port

    original, _ = finished_run
    out, aside = original.with_name(original.name + "-moved"), original.with_name(original.name + "-aside")
    shutil.copytree(original, out, symlinks=True)
    original.rename(aside)  # gone while the UI runs; restored for the other tests
    port = free_port()
    proc = subprocess.Popen([*CLI, "ui", "--output", str(out), "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.5)
        else:
            pytest.fail("MLflow UI did not come up")
        experiment = _get(port, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=selfreward")["experiment"]
        links = _printed_links(proc)
        assert set(links) == {"model metrics", "compare stages", "verdict", "latest stage", "champion model"}
        parent = links["verdict"].split("/runs/")[1].split("/")[0]
        assert "# cli: verdict" in _get(port, f"/get-artifact?path=summary/verdict.md&run_uuid={parent}").decode()
        assert links["model metrics"].endswith(f"/runs/{parent}/model-metrics")

        runs = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", method="POST",
                                      data=json.dumps({"experiment_ids": [experiment["experiment_id"]]}).encode(),
                                      headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(runs, timeout=30) as r:
            run_ids = [run["info"]["run_id"] for run in json.load(r)["runs"]]
        served = 0
        for run_id in run_ids:
            for path in _run_files(port, run_id):
                local = out / "mlartifacts" / run_id / "artifacts" / path
                assert _get(port, f"/get-artifact?path={quote(path)}&run_uuid={run_id}") == local.read_bytes(), path
                served += 1
        assert len(run_ids) == 3 and served >= 6  # parent, sft, iter-1: plots, pairs, summary, verdict

        versions = _get(port, "/api/2.0/mlflow/model-versions/search?filter=" + quote("name='cli-policy'"))
        assert len(versions["model_versions"]) == 2  # sft, iter-1
        for version in versions["model_versions"]:
            uri = _get(port, f"/api/2.0/mlflow/model-versions/get-download-uri?name=cli-policy&version={version['version']}")
            root = uri["artifact_uri"].removeprefix("mlflow-artifacts:/")
            assert not uri["artifact_uri"].startswith("file:") and str(original) not in uri["artifact_uri"]
            assert b"flavors" in _get(port, f"/api/2.0/mlflow-artifacts/artifacts/{root}/MLmodel")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        aside.rename(original)
        shutil.rmtree(out, ignore_errors=True)
    assert f"http://127.0.0.1:{port}" in proc.stdout.read()


def test_join_refuses_machine_rank_0_before_loading_anything():
    proc = cli("join", "demo", "--machine-rank", "0", timeout=30)
    assert proc.returncode == 2 and "machine 0 runs the flow" in proc.stderr and "Traceback" not in proc.stderr
