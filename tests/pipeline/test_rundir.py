"""The run folder's checks and files: --output and run_name refused before anything is written, the
identity a folder keeps (new, saved, or legacy for a folder that predates identities)."""

import pytest

from pipeline.config import load_config
from pipeline.rundir import (
    RunDirError,
    RunIdentity,
    check_output_dir,
    check_run_name,
    read_identity,
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
