"""The `selfreward` CLI as a user runs it: run, compare (table, JSON, plot) and ui."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

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


def test_rerun_resumes_without_recomputing(finished_run):
    out, _ = finished_run
    before = (out / "cli" / "iter-1" / "checkpoint" / "manifest.json").stat().st_mtime_ns
    sets = [a for item in TINY + ["iterations=1", "run_name=cli"] for a in ("--set", item)]
    proc = cli("run", "--output", str(out), *sets)
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


def test_ui_serves_mlflow_on_loopback(finished_run):
    from tests.flows.test_deployment import free_port

    out, _ = finished_run
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
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=selfreward") as r:
            assert json.load(r)["experiment"]["name"] == "selfreward"
        links = _printed_links(proc)
        assert set(links) == {"model metrics", "compare stages", "verdict", "champion model"}
        parent = links["verdict"].split("/runs/")[1].split("/")[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/get-artifact?path=summary/verdict.md&run_uuid={parent}") as r:
            assert "# cli: verdict" in r.read().decode()  # what the verdict link shows
        assert links["model metrics"].endswith(f"/runs/{parent}/model-metrics")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    assert f"http://127.0.0.1:{port}" in proc.stdout.read()
