"""Step folders: a step is published with a manifest of its files, read back when its fingerprint
matches, rebuilt when it does not, and never left half-written."""

import json

import pytest

from dpo.files import sha256_file
from flows.stepdir import (
    MANIFEST,
    InjectedFault,
    Salt,
    StepRecord,
    fingerprint,
    finished,
    run_step,
    step_seed,
)


def writer(calls: list, text: str = "hello"):
    def build(tmp):
        calls.append(tmp)
        tmp.mkdir()
        (tmp / "out.txt").write_text(text)
        return {"chars": len(text)}

    return build


def test_a_step_is_published_with_its_files_hashes_and_summary(tmp_path):
    calls = []
    record = run_step("demo", tmp_path / "iter-1" / "demo", "fp1", writer(calls))
    folder = tmp_path / "iter-1" / "demo"
    assert record == StepRecord.model_validate_json((folder / MANIFEST).read_text())
    assert record.files == {"out.txt": sha256_file(folder / "out.txt")} and record.summary == {"chars": 5}
    assert record.path == str(folder.resolve()) and len(calls) == 1
    assert sorted(p.name for p in (tmp_path / "iter-1").iterdir()) == ["demo"]  # no temp or old folder left


def test_a_finished_step_is_read_back_and_another_fingerprint_rebuilds_it(tmp_path):
    calls = []
    first = run_step("demo", tmp_path / "demo", "fp1", writer(calls))
    assert run_step("demo", tmp_path / "demo", "fp1", writer(calls, "other")) == first and len(calls) == 1
    rebuilt = run_step("demo", tmp_path / "demo", "fp2", writer(calls, "other"))
    assert len(calls) == 2 and rebuilt.fingerprint == "fp2" and (tmp_path / "demo" / "out.txt").read_text() == "other"
    assert finished(tmp_path / "demo", "fp1") is None and finished(tmp_path / "demo", "fp2") == rebuilt


def test_a_failed_build_publishes_nothing_and_a_rerun_starts_clean(tmp_path):
    def failing(tmp):
        tmp.mkdir()
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("crash mid-step")

    with pytest.raises(RuntimeError, match="crash mid-step"):
        run_step("demo", tmp_path / "demo", "fp", failing)
    assert not (tmp_path / "demo").exists()
    record = run_step("demo", tmp_path / "demo", "fp", writer([]))
    assert set(record.files) == {"out.txt"}  # the crashed attempt's file is gone


def test_a_step_named_in_the_fault_variable_fails_before_it_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFREWARD_FAIL_STEP", "iter-2/demo")
    with pytest.raises(InjectedFault):
        run_step("demo", tmp_path / "iter-2" / "demo", "fp", writer([]))


def test_fingerprints_are_stable_and_seeds_differ_by_step_and_iteration():
    assert fingerprint("a", {"x": 1, "y": [2]}) == fingerprint("a", {"y": [2], "x": 1})
    assert fingerprint("a", 1) != fingerprint("a", 2)
    seeds = {step_seed(0, it, salt) for it in (1, 2) for salt in Salt}
    assert len(seeds) == 2 * len(Salt)
    assert step_seed(3, 1, Salt.JUDGE) == 3 * 1_000_003 + 101 + 3  # values fixed: resumed runs reproduce


def test_the_manifest_is_plain_json(tmp_path):
    run_step("demo", tmp_path / "demo", "fp", writer([]))
    assert json.loads((tmp_path / "demo" / MANIFEST).read_text())["step"] == "demo"
