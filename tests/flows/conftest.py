"""Flow tests run real Prefect flows on a temporary database (one harness per session, `prefect_harness`
in tests/conftest.py) and a real MLflow sqlite store per test."""

import pytest

from pipeline.config import RunConfig, load_config

# A reduced demo: same code path, seconds instead of minutes.
TINY = [
    "data.num_ift=48", "data.num_eft=48", "data.num_seed_prompts=24", "data.num_eval=8",
    "model.tiny.hidden_size=32", "model.tiny.num_layers=1", "model.tiny.num_heads=2",
    "model.tiny.intermediate_size=64", "model.tiny.vocab_size=300",
    "sft.num_epochs=null", "sft.num_train_steps=8", "sft.batch_size=16",
    "iteration.prompts.num_prompts=6", "iteration.candidates.num=3",
    "iteration.candidates.sampling.max_new_tokens=12", "iteration.judge.num_judgments=2",
    "iteration.judge.sampling.max_new_tokens=12", "iteration.dpo.num_epochs=null",
    "iteration.dpo.num_train_steps=3", "iteration.dpo.batch_size=4",
    "eval.max_new_tokens=12", "eval.num_judge_pairs=4", "runtime.retry_delay_seconds=0",
    # A barely trained judge rarely emits a parsable score: iteration 1 uses an external reward so
    # the DPO step has pairs; iteration 2 judges itself, and skips when nothing can be paired.
    "overrides.1.judge.reward_fn=tests.flows.rewards:distinct_letters",
    "iteration.on_degenerate=skip",
    # A barely trained model writes no valid task either: the iterations draw from the pool.
    "iteration.prompts.source=seed",
    # The demo starts each iteration from the champion; a barely trained judge fails its health veto,
    # so M1 would stay champion and start every iteration. The loop's tests build on the latest model
    # (tests/flows/test_run.py tests the champion start).
    "promotion.start_from=latest",
]


def tiny_config(*extra: str) -> RunConfig:
    return load_config(None, TINY + list(extra))


@pytest.fixture
def no_mlflow_env(monkeypatch):
    # Each test gets the sqlite store under its own output directory.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
