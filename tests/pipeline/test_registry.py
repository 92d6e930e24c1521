"""A stage's checkpoint as an MLflow model: logged with the transformers flavor, registered once per stage
run (also after a crash between logging and registering), loadable by alias offline, and answering a
prompt as the pipeline's own greedy decoding does."""

import os

import mlflow
import pytest

import generation
from pipeline.tracking import ModelRegistry, Tracker, chat_prompt_template
from tests._tiny import build_tiny

CORPUS = ["Write 5 letters from a to h.", "b a c d e", "Score: 3", "Answer with the letters in order."] * 4


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "selfreward", retries=0)
    tiny = build_tiny(tmp_path / "tiny", CORPUS, vocab_size=300, max_position_embeddings=64)
    return uri, tracker, tiny


def test_a_version_is_a_transformers_model_registered_once_and_loadable_by_alias(store, monkeypatch):
    uri, tracker, tiny = store
    registry = ModelRegistry(tracker, "demo-policy")
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    calls = []

    def load():
        calls.append(1)
        return tiny.model, tiny.tokenizer

    register = lambda: registry.register(  # noqa: E731
        run_id, load, render=generation.render_chat_prompt, max_new_tokens=6, source_name="demo/sft/model",
        description="| gt_score | 0.7 |", tags={"selfreward.stage": "sft"})
    version = register()
    registry.set_alias("sft", version)
    assert register() == version and len(calls) == 1  # found again by its run: not logged twice

    registered = tracker.client.get_model_version_by_alias("demo-policy", "sft")
    assert registered.source.startswith("models:/m-") and registered.description == "| gt_score | 0.7 |"
    assert registered.tags == {"selfreward.stage": "sft"}  # the alias is not repeated as a tag
    assert registry.alias_version("sft") == version and registry.alias_version("champion") is None

    mlflow.set_tracking_uri(uri)  # as a user loads it
    served = mlflow.pyfunc.load_model("models:/demo-policy@sft")
    prompt = "Write 5 letters from a to h."
    [answer] = served.predict([prompt])
    ids = generation.encode_chat_prompt(tiny.tokenizer, prompt)
    greedy = generation.generate(tiny.model, tiny.tokenizer, [ids], generation.SamplingParams(max_new_tokens=6, temperature=0.0))
    assert answer == greedy[0][0].text  # the chat format applied, a completion only
    # The scoring app `mlflow models serve` runs, in process: it answers the same over REST.
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    with TestClient(scoring_server.init(served)) as client:
        response = client.post("/invocations", json={"inputs": [prompt]})
    assert response.status_code == 200 and response.json() == {"predictions": [answer]}
    pipe = mlflow.transformers.load_model("models:/demo-policy@sft")
    assert pipe.task == "text-generation"
    mlflow.set_tracking_uri(None)


@pytest.mark.parametrize("preset", [None, "http://127.0.0.1:1"])
def test_a_model_logged_before_a_crash_is_registered_not_logged_again(store, monkeypatch, preset):
    _, tracker, tiny = store
    if preset is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", preset)
    registry = ModelRegistry(tracker, "demo-policy")
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    model_id = registry._log_model(run_id, lambda: (tiny.model, tiny.tokenizer), None, 4, "demo/sft/model")
    # Logging used this store without redirecting the process: a later run elsewhere goes where it would have.
    assert os.environ.get("MLFLOW_TRACKING_URI") == preset

    def crash():
        raise AssertionError("logged again")

    version = registry.register(run_id, crash, render=None, max_new_tokens=4, source_name="x", description="", tags={})
    assert tracker.client.get_model_version("demo-policy", version).source == f"models:/{model_id}"


def test_the_prompt_template_is_the_chat_turn_with_braces_escaped():
    template = chat_prompt_template(lambda text: "<|user|>{sys}" + text + "<|assistant|>")
    assert template == "<|user|>{{sys}}{prompt}<|assistant|>"
    assert template.format(prompt="hi") == "<|user|>{sys}hi<|assistant|>"
