"""All MLflow code of the project.

- `tracker`: the `Tracker`, one parent run per pipeline run and one child run per stage, found again
  by tags so a resumed run logs nothing twice.
- `registry`: every stage's checkpoint as a transformers-flavor MLflow model, registered with aliases.
- `retry`: calls retried with back-off while the tracking server is away (`TrackingUnavailableError`).
"""

from pipeline.artifact_store import default_tracking_uri  # MLflow-free, for the CLI's early checks
from pipeline.tracking.registry import ModelRegistry, chat_prompt_template
from pipeline.tracking.retry import TrackingUnavailableError
from pipeline.tracking.tracker import (
    PARENT_STAGE,
    TAG_CONFIG,
    TAG_IDENTITY,
    TAG_LOCATION,
    TAG_OUTCOME,
    TAG_PARENT,
    TAG_RUN_NAME,
    TAG_STAGE,
    RunIdentityError,
    Tracker,
    flatten,
    portable_paths,
    registered_model_name,
)

__all__ = [
    "PARENT_STAGE",
    "TAG_CONFIG",
    "TAG_IDENTITY",
    "TAG_LOCATION",
    "TAG_OUTCOME",
    "TAG_PARENT",
    "TAG_RUN_NAME",
    "TAG_STAGE",
    "ModelRegistry",
    "RunIdentityError",
    "Tracker",
    "TrackingUnavailableError",
    "chat_prompt_template",
    "default_tracking_uri",
    "flatten",
    "portable_paths",
    "registered_model_name",
]
