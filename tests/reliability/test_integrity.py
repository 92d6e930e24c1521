"""A run never reports, registers or trains on what is not its own.

One run goes through: a first launch that stops on an IFT prompt too long for `sft.max_len` (found
once the run's tokenizer exists, after the data and base steps), its output folder moved elsewhere,
the file fixed and a resume in the new place that completes; then edits of its input files after it
trained (refused), and other runs on the same tracking store that would take its name or its
registered model (refused). Each launch is the CLI's `main` in-process (the code of `selfreward run`).
"""

import contextlib
import io
import json
import math
import random
import shutil
from pathlib import Path

import pytest
from mlflow.artifacts import download_artifacts
from mlflow.tracking import MlflowClient

from flows.stepdir import MANIFEST
from pipeline.cli import main
from pipeline.tracking import TAG_IDENTITY, Tracker
from tests.flows.conftest import TINY
from tests.reliability.helpers import REPO, read_manifest

pytestmark = pytest.mark.slow
NAME = "integrity"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _launch(out: Path, *sets: str) -> tuple[int, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(["run", "--output", str(out), *[a for s in sets for a in ("--set", s)]])
    return code, stderr.getvalue()


@pytest.fixture(scope="module")
def run(prefect_harness, tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    rng = random.Random(0)
    words = ["".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(7)) for _ in range(20)]
    ift = [{"prompt": f"add {i} and {i + 1}", "response": f"{2 * i + 1}"} for i in range(24)]
    files = {
        "ift": _jsonl(root / "ift.jsonl", ift[:12] + [{"prompt": " ".join(words), "response": "ok"}] + ift[12:]),
        "seed": _jsonl(root / "seed.jsonl", [{"prompt": f"add {i} and {i + 2}"} for i in range(12)]),
        "template": root / "judge.yaml",
    }
    shutil.copyfile(REPO / "configs" / "judges" / "demo_rules.yaml", files["template"])
    sets = TINY + [f"run_name={NAME}", "iterations=1", "eval.enabled=false", "data.task=null", "sft.max_len=48",
                   f"data.ift={files['ift']}", f"data.seed_prompts={files['seed']}", "iteration.prompts.source=seed",
                   f"iteration.judge.template={files['template']}"]
    patch = pytest.MonkeyPatch()
    patch.setenv("PREFECT_API_URL", prefect_harness)  # keeps the CLI from setting PREFECT_HOME here
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the sqlite store lives in (and moves with) the output
    first, middle, out = root / "first", root / "middle", root / "out"
    facts = {"files": files, "sets": sets, "out": out, "run_dir": out / NAME, "old": [first, middle]}
    try:
        facts["too_long"] = _launch(first, *sets)
        facts["published_after_refusal"] = sorted(p.parent.name for p in (first / NAME).glob(f"*/{MANIFEST}"))
        shutil.move(first, middle)
        _jsonl(files["ift"], ift)  # the user fixes the file
        facts["fixed"] = _launch(middle, *sets)
        shutil.move(middle, out)  # finished now: the resume reads every step back
        manifests = {p: p.stat().st_mtime_ns for p in facts["run_dir"].rglob(MANIFEST)}
        facts["moved_again"] = _launch(out, *sets)
        facts["recomputed"] = sorted(str(p) for p, t in manifests.items() if p.stat().st_mtime_ns != t)
        facts["tracking_uri"] = f"sqlite:///{out / 'mlflow.db'}"
    finally:
        patch.undo()
    return facts


@pytest.fixture
def shared_store(run, prefect_harness, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", prefect_harness)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", run["tracking_uri"])
    return run


@pytest.mark.reliability(area="bad input", fault="an IFT prompt under the pre-token bound but over sft.max_len in real tokens",
                         expected="exit 2 naming data.ift, file and line, once the run's tokenizer exists; no training")
def test_a_prompt_too_long_for_sft_is_named_before_training(run):
    code, stderr = run["too_long"]
    assert code == 2, stderr[-3000:]
    message = [line for line in stderr.splitlines() if line.startswith("selfreward: error:")][-1]
    assert f"data.ift: {run['files']['ift']}:13: the prompt has " in message and "sft.max_len (48)" in message
    assert "Traceback" not in stderr
    assert run["published_after_refusal"] == ["base", "data"]  # nothing trained


@pytest.mark.reliability(area="crash and resume", fault="a step failed on bad input, then the user fixed the input file",
                         expected="the resume reads the fixed file (no stale copy) and completes")
def test_a_fixed_input_file_is_read_again(run):
    code, stderr = run["fixed"]
    assert code == 0, stderr[-3000:]
    copied = run["run_dir"] / "data" / "ift.jsonl"
    assert copied.read_bytes() == run["files"]["ift"].read_bytes()
    assert (run["run_dir"] / "iter-1" / "checkpoint" / MANIFEST).is_file()


@pytest.mark.reliability(area="crash and resume", fault="a partial output folder moved to another path, then resumed",
                         expected="completes in the new folder; nothing (step folder or MLflow artifact) written at the old path")
def test_a_moved_output_folder_resumes_in_place(run, monkeypatch):
    assert run["fixed"][0] == 0, run["fixed"][1][-3000:]
    assert run["moved_again"][0] == 0, run["moved_again"][1][-3000:]
    assert not any(old.exists() for old in run["old"])
    assert run["recomputed"] == []  # read back from the new place
    run_dir = run["run_dir"]
    assert read_manifest(run_dir / "sft")["path"] == str(run["old"][1] / NAME / "sft")  # written before the move
    version = MlflowClient(run["tracking_uri"]).get_model_version_by_alias(f"{NAME}-policy", "sft")
    # The store keeps no absolute path (mlflow-artifacts:/), so versions registered before the moves
    # still resolve to files, now under the new folder.
    assert not any(str(old) in version.source for old in run["old"]) and not version.source.startswith("file:")
    assert (run["out"] / "mlartifacts").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", run["tracking_uri"])  # `models:/` URIs resolve in the registry it names
    assert list(Path(download_artifacts(f"models:/{NAME}-policy@sft")).iterdir())


EDITS = [("data.ift", "ift"), ("data.seed_prompts", "seed"), ("iteration.judge.template", "template")]


@pytest.mark.parametrize(("field", "key"), [pytest.param(field, key, id=key, marks=pytest.mark.reliability(
    area="crash and resume", fault=f"{field} edited after the run trained on it, then resumed",
    expected="exit 2 naming the field and the file; nothing recomputed")) for field, key in EDITS])
def test_an_input_edited_after_training_is_refused(shared_store, field, key):
    path, run_dir = shared_store["files"][key], shared_store["run_dir"]
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob(MANIFEST)}
    original = path.read_bytes()
    path.write_bytes(original.replace(b"add", b"sum") if key != "template" else original.replace(b"Check", b"Count"))
    try:
        code, stderr = _launch(shared_store["out"], *shared_store["sets"])
    finally:
        path.write_bytes(original)
    assert code == 2, stderr[-3000:]
    message = [line for line in stderr.splitlines() if line.startswith("selfreward: error:")][-1]
    assert message.startswith(f"selfreward: error: {field}") and f"({path}) changed since run '{NAME}' read it" in message
    assert "stage sft has already trained on the old content" in message
    assert "Traceback" not in stderr
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob(MANIFEST)} == before


OTHERS = [
    ("same-name", "the same run name in another output folder, same tracking store (another seed)",
     ["seed=1"], "run name 'integrity' is already used in MLflow experiment"),
    ("same-model", "another run registering into the same model name (tracking.registered_model)",
     [f"run_name=other-{NAME}", f"tracking.registered_model={NAME}-policy"], "registered model 'integrity-policy'"),
    ("other-experiment", "the same run name in another experiment of the same store",
     ["tracking.experiment=elsewhere"], "registered model 'integrity-policy'"),
]


@pytest.mark.parametrize(("sets", "expected"), [pytest.param(sets, expected, id=row_id, marks=pytest.mark.reliability(
    area="crash and resume", fault=fault,
    expected="exit 2 with a message; the first run's MLflow runs, numbers and model aliases untouched"))
    for row_id, fault, sets, expected in OTHERS])
def test_another_run_never_takes_over_this_runs_tracking(shared_store, tmp_path, sets, expected):
    client = MlflowClient(shared_store["tracking_uri"])
    tracker = Tracker(shared_store["tracking_uri"], "selfreward")
    parent = tracker.find_pipeline(NAME)

    def snapshot():
        versions = {a: client.get_model_version_by_alias(f"{NAME}-policy", a).source for a in ("sft", "iter-1")}
        metrics = {k: None if math.isnan(v) else v for k, v in client.get_run(parent).data.metrics.items()}
        return metrics, client.get_run(parent).data.params, versions  # NaN (a rate of 0 of 0) != NaN

    before = snapshot()
    code, stderr = _launch(tmp_path / "elsewhere", *shared_store["sets"], *sets)
    assert code == 2, stderr[-3000:]
    message = [line for line in stderr.splitlines() if line.startswith("selfreward: error:")][-1]
    assert expected in message and "Traceback" not in stderr
    if "seed=1" in sets:
        assert str(shared_store["run_dir"]) in message  # names the run that owns the name
    assert snapshot() == before
    assert client.get_run(parent).data.tags[TAG_IDENTITY] == json.loads(
        (shared_store["run_dir"] / ".identity.json").read_text())["run_uid"]
