"""Every stage's checkpoint as an MLflow model: logged with the transformers flavor, registered as a
version of the run's registered model, with aliases (`sft`, `iter-1`, ..., `champion`).

A version is an MLflow model, not a folder of weights: `mlflow.pyfunc.load_model("models:/<name>@champion")`
returns a text-generation model (prompt in, completion out, the chat template applied), and
`mlflow.transformers.load_model` the transformers pipeline. `mlflow models serve -m
models:/<name>@champion --env-manager local` serves it offline. Its source is `models:/<model_id>`
and its files live under the experiment's artifact location, so versions move with the store.

Logging is idempotent: a version registered for a stage run is found again by that run, and a model
logged before a crash (READY, not registered yet) is registered instead of being logged twice.
"""

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException

from pipeline.tracking.retry import retrying

__all__ = ["LOGGED_MODEL_NAME", "ModelRegistry", "chat_prompt_template"]

LOGGED_MODEL_NAME = "policy"  # `runs:/<stage run>/policy` is the stage's model too
_SENTINEL = "\x00prompt\x00"
# Pinned so logging never spawns MLflow's requirement inference (a subprocess that loads the model).
_REQUIREMENTS = ["transformers", "torch", "tokenizers", "safetensors", "accelerate"]


def chat_prompt_template(render: Callable[[str], str]) -> str:
    """The MLflow `prompt_template` of a model whose chat format renders a user turn with `render`:
    the rendered turn with `{prompt}` in place of the user's text (other braces escaped, since MLflow
    fills it with `str.format`)."""
    text = render(_SENTINEL).replace("{", "{{").replace("}", "}}")
    return text.replace(_SENTINEL, "{prompt}")


class ModelRegistry:
    """The registered model of one run; each version is the transformers-flavor model of a stage run."""

    def __init__(self, tracker: Any, name: str) -> None:
        self.tracker, self.name, self.client = tracker, name, tracker.client

    @retrying
    def version_of_run(self, run_id: str) -> str | None:
        """The version registered for `run_id`, if any."""
        found = self.client.search_model_versions(f"name = '{self.name}' and run_id = '{run_id}'")
        return str(found[0].version) if found else None

    @retrying
    def register(self, run_id: str, load: Callable[[], tuple[Any, Any]], *, render: Callable[[Any, str], str] | None,
                 max_new_tokens: int, source_name: str, description: str, tags: Mapping[str, str]) -> str:
        """Log the stage's model on `run_id` (unless it is already registered) and register it.

        Args:
            run_id: the stage run.
            load: returns (model, tokenizer); called only when the model must be logged.
            render: `render(tokenizer, user_text)` is a user turn in the model's chat format, ready for
                the answer; pyfunc and served inputs are wrapped in it (`chat_prompt_template`).
            max_new_tokens: default length of a pyfunc/served completion (a request may change it).
            source_name: recorded as the model's origin (a path relative to the output folder).
            description: the version's markdown description; replaces an earlier one on resume.
            tags: the version's tags; set again on resume.

        Returns:
            The version number.
        """
        version = self.version_of_run(run_id)
        if version is None:
            model_id = self._logged_model(run_id) or self._log_model(run_id, load, render, max_new_tokens, source_name)
            try:
                self.client.create_registered_model(self.name)
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            # The sqlite registry looks the logged model up through the process's tracking URI.
            with _process_tracking_uri(self.tracker.tracking_uri):
                version = str(self.client.create_model_version(self.name, f"models:/{model_id}", run_id=run_id,
                                                               model_id=model_id, description=description,
                                                               tags=dict(tags)).version)
        else:
            self.client.update_model_version(self.name, version, description=description)
            for key, value in tags.items():
                self.client.set_model_version_tag(self.name, version, key, value)
        return version

    def _logged_model(self, run_id: str) -> str | None:
        """A model this run logged before (READY) that was never registered: a crash came in between."""
        outputs = self.client.get_run(run_id).outputs
        for output in (outputs.model_outputs if outputs else None) or []:
            logged = self.client.get_logged_model(output.model_id)
            if logged.name == LOGGED_MODEL_NAME and logged.status == LoggedModelStatus.READY:
                return logged.model_id
        return None

    def _log_model(self, run_id: str, load: Callable[[], tuple[Any, Any]], render: Callable[[Any, str], str] | None,
                   max_new_tokens: int, source_name: str) -> str:

        # Created first in the stage run's experiment: left to itself, log_model files the model under
        # the active (here: default) experiment.
        logged = self.client.create_logged_model(self.tracker.experiment_id, name=LOGGED_MODEL_NAME, source_run_id=run_id)
        with _process_tracking_uri(self.tracker.tracking_uri):
            self._log_transformers(logged.model_id, run_id, load, render, max_new_tokens, source_name)
        return logged.model_id

    def _log_transformers(self, model_id: str, run_id: str, load: Callable[[], tuple[Any, Any]],
                          render: Callable[[Any, str], str] | None, max_new_tokens: int, source_name: str) -> None:
        import mlflow.transformers
        from mlflow.models import infer_signature

        model, tokenizer = load()
        prompt_template = chat_prompt_template(lambda text: render(tokenizer, text)) if render else None
        model.config._name_or_path = tokenizer.name_or_path = source_name  # no absolute path in the MLmodel
        params = {"max_new_tokens": max_new_tokens, "do_sample": False, "temperature": 1.0, "top_p": 1.0}
        mlflow.transformers.log_model(
            {"model": model, "tokenizer": tokenizer}, task="text-generation", name=LOGGED_MODEL_NAME,
            model_id=model_id, run_id=run_id, prompt_template=prompt_template,
            signature=infer_signature(["prompt"], ["completion"], params=params),
            model_config={"return_full_text": False},  # a completion, not the prompt repeated
            pip_requirements=[f"mlflow=={mlflow.__version__}", *_REQUIREMENTS], model_card=_card(source_name),
        )

    @retrying
    def set_alias(self, alias: str, version: str) -> None:
        """Point `alias` at `version` (moving it from another version)."""
        self.client.set_registered_model_alias(self.name, alias, version)

    @retrying
    def set_version_tag(self, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(self.name, version, key, value)

    @retrying
    def alias_version(self, alias: str) -> str | None:
        """The version `alias` points at, if any."""
        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None


@contextmanager
def _process_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's model logging (and the sqlite registry's check of a version's logged model) reads the
    process's tracking URI, not the client's. Setting it also sets
    MLFLOW_TRACKING_URI in the environment, which would send every later run of this process (and its
    subprocesses) to this store: both are put back as they were."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    env = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if env is not None:  # restoring an unset global URI unsets the variable too
            os.environ["MLFLOW_TRACKING_URI"] = env


def _card(source_name: str):
    """A model card, so MLflow does not look the model up on the Hugging Face hub (we are offline)."""
    from huggingface_hub import ModelCard

    return ModelCard(f"---\nlibrary_name: transformers\n---\n# {source_name}\n\nA self-rewarding stage model (selfreward).\n")
