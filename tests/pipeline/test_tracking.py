"""Tracker against a real sqlite MLflow store: batched training curves without duplicates, and a run's
identity (its own parent run, never another run's name or registered model)."""

import pytest

from pipeline.tracking import RunIdentityError, Tracker


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "selfreward")
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    return uri, tracker, run_id


def _history(tracker: Tracker, run_id: str, key: str = "loss") -> list[tuple[int, float]]:
    return sorted(tracker.metric_history(run_id, key))


def test_buffered_metrics_reach_mlflow_on_flush_with_every_step(store):
    _, tracker, run_id = store
    with tracker.buffered_metrics(run_id, flush_every_seconds=3600) as log_fn:
        for step in range(1, 6):
            log_fn({"loss": 1.0 / step, "rewards/margins": float(step)}, step)
        assert _history(tracker, run_id) == []  # held back: no request per step
    assert _history(tracker, run_id) == [(s, pytest.approx(1.0 / s)) for s in range(1, 6)]
    assert _history(tracker, run_id, "rewards/margins") == [(s, float(s)) for s in range(1, 6)]


def test_zero_interval_sends_every_step_at_once(store):
    _, tracker, run_id = store
    log_fn = tracker.buffered_metrics(run_id, flush_every_seconds=0)
    log_fn({"loss": 0.5}, 1)
    assert _history(tracker, run_id) == [(1, 0.5)]


def test_failed_training_still_sends_its_logged_steps_and_keeps_its_error(store):
    _, tracker, run_id = store
    with pytest.raises(RuntimeError, match="loss is nan"):
        with tracker.buffered_metrics(run_id, flush_every_seconds=3600) as log_fn:
            log_fn({"loss": 0.7}, 1)
            raise RuntimeError("loss is nan")
    assert _history(tracker, run_id) == [(1, pytest.approx(0.7))]


def test_replayed_steps_from_a_resumed_process_are_not_stored_twice(store):
    uri, tracker, run_id = store
    tracker.log_metric_steps(run_id, [(s, {"loss": float(s)}) for s in range(1, 4)])
    resumed = Tracker(uri, "selfreward")  # a new process knows nothing of what was logged
    resumed.log_metric_steps(run_id, [(s, {"loss": float(s), "new_key": 1.0}) for s in range(1, 6)])
    assert _history(tracker, run_id) == [(s, float(s)) for s in range(1, 6)]
    assert [s for s, _ in _history(tracker, run_id, "new_key")] == [1, 2, 3, 4, 5]


def test_a_run_is_found_by_its_identity_and_never_takes_another_runs_name_or_model(store):
    uri, tracker, _ = store
    first = tracker.start_pipeline("demo", {}, "fp", {}, identity="a" * 32, location="/runs/demo",
                                   registered_model="demo-policy")
    assert tracker.start_pipeline("demo", {}, "fp", {}, identity="a" * 32, location="/runs/demo") == first
    with pytest.raises(RunIdentityError, match=r"already used .* by another run \(/runs/demo\)"):
        tracker.claim("demo", "b" * 32)
    child = tracker.stage_run(first, "demo", "sft")
    tracker.client.create_registered_model("demo-policy")
    tracker.client.create_model_version("demo-policy", "file:///x", run_id=child)
    assert tracker.claim("demo", "a" * 32, registered_model="demo-policy") == first  # its own version
    with pytest.raises(RunIdentityError, match="registered model 'demo-policy' .* another run"):
        tracker.claim("other", "c" * 32, registered_model="demo-policy")


def test_a_run_started_before_identities_adopts_its_untagged_parent_once(store):
    _, tracker, _ = store
    legacy = tracker.start_pipeline("old", {}, "fp", {})  # no identity: as runs were started before
    assert tracker.claim("old", "d" * 32, legacy=True) == legacy
    assert tracker.start_pipeline("old", {}, "fp", {}, identity="d" * 32, legacy=True) == legacy
    assert tracker.claim("old", "d" * 32) == legacy  # tagged now: found without the legacy rule
    with pytest.raises(RunIdentityError):
        tracker.claim("old", "e" * 32, legacy=True)  # another legacy folder of that name cannot take it
