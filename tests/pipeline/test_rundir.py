"""The run folder's checks and files: --output and run_name refused before anything is written, the
identity a folder keeps (new, saved, or legacy for a folder that predates identities), and the saved config a
resume must match (only `iterations` may be raised)."""

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.rundir import (
    RunDirError,
    RunIdentity,
    check_output_dir,
    check_run_name,
    check_saved_config,
    read_identity,
    saved_config,
    write_config,
    write_identity,
)


def test_run_names_of_the_stores_and_of_foreign_entries_are_refused(tmp_path):
    for name in ("prefect", "mlartifacts", "mlflow.db", "mlflow.db-journal"):
        with pytest.raises(RunDirError, match="is reserved"):
            check_run_name(tmp_path, name)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    with pytest.raises(RunDirError, match="is not a run folder"):
        check_run_name(tmp_path, "notes")
    check_run_name(tmp_path, "prefect-sweep")  # only the exact names are the stores'
    check_run_name(tmp_path, "fresh")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / ".lock").write_text("")
    check_run_name(tmp_path, "locked")  # a run killed before it saved its config


def test_output_must_be_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(RunDirError, match="cannot be created"):
        check_output_dir(tmp_path / "file" / "runs")
    check_output_dir(tmp_path / "new" / "runs")


def test_identity_is_new_saved_or_legacy(tmp_path):
    fresh = read_identity(tmp_path / "run")
    assert not fresh.legacy and len(fresh.run_uid) == 32
    write_identity(tmp_path / "run", RunIdentity(run_uid="abc", prefect_flow_runs=["f1"]))
    saved = read_identity(tmp_path / "run")
    assert saved.run_uid == "abc" and saved.prefect_flow_runs == ["f1"]
    write_config(tmp_path / "old", load_config(None))
    assert read_identity(tmp_path / "old").legacy  # a config but no identity: started before identities
    (tmp_path / "run" / ".identity.json").write_text("{not json")
    with pytest.raises(RunDirError, match="cannot be read"):
        read_identity(tmp_path / "run")


def test_a_resume_may_raise_iterations_and_nothing_else(tmp_path):
    run_dir = tmp_path / "demo"
    started = load_config(None, ["iterations=2"])
    assert check_saved_config(run_dir, started) is None  # a new run
    write_config(run_dir, started)
    assert check_saved_config(run_dir, started) is None  # a plain resume
    raised = load_config(None, ["iterations=4"])
    assert check_saved_config(run_dir, raised) == 2  # continues from 2
    with pytest.raises(ConfigError, match="not lowered to 1"):
        check_saved_config(run_dir, load_config(None, ["iterations=1"]))
    with pytest.raises(ConfigError, match=r"changed: iteration\.dpo\.beta\)"):
        check_saved_config(run_dir, load_config(None, ["iterations=4", "iteration.dpo.beta=0.3"]))
    write_config(run_dir, raised)
    assert saved_config(run_dir)["iterations"] == 2  # written once, unless the run continues
    write_config(run_dir, raised, continued=True)
    assert saved_config(run_dir)["iterations"] == 4 and check_saved_config(run_dir, raised) is None
