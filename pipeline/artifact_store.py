"""`mlflow-artifacts:` URIs for a local sqlite store, so the whole output folder can move.

An experiment created with the artifact location `mlflow-artifacts:/` stores no absolute path: its
runs' artifacts are `mlflow-artifacts:/<run_id>/artifacts` and its logged models
`mlflow-artifacts:/models/<model_id>/artifacts`. `mlflow server --artifacts-destination
<output>/mlartifacts` (what `selfreward ui` starts) maps them into that folder, wherever it is now.
MLflow's own client only resolves that scheme through a server; this resolver lets a client whose
tracking URI is `sqlite:///<output>/mlflow.db` read and write them directly in
`<output>/mlartifacts`, the same layout. With any other tracking URI, and inside `mlflow server`
itself, MLflow's own repository is used unchanged.

It is registered in-process by `pipeline.tracking` (`register_resolver`), and as the
`mlflow.artifact_repository` entry point `mlflow-artifacts` of this package, so any process of the
virtualenv (`mlflow models serve`, `mlflow.pyfunc.load_model`) resolves it once the project is
installed. MLflow loads entry points while it imports, so this module imports MLflow lazily.
"""

import os
from pathlib import Path
from urllib.parse import urlparse

__all__ = ["ARTIFACTS_DIR", "LOCATION", "SCHEME", "default_tracking_uri", "local_artifact_root",
           "local_or_proxied_repository", "register_resolver"]

SCHEME = "mlflow-artifacts"
LOCATION = f"{SCHEME}:/"  # the artifact location of experiments created in a local sqlite store
ARTIFACTS_DIR = "mlartifacts"  # beside mlflow.db, as `selfreward ui` serves it


def default_tracking_uri(output_dir: str | Path) -> str:
    """`MLFLOW_TRACKING_URI` when set, else a sqlite store under the output directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def local_artifact_root(tracking_uri: str | None) -> str | None:
    """`<folder of the sqlite file>/mlartifacts` for a `sqlite:///` tracking URI, else None."""
    if not tracking_uri or not tracking_uri.startswith("sqlite:///"):
        return None
    db_path = tracking_uri.removeprefix("sqlite:///").split("?")[0]
    return os.path.join(os.path.dirname(os.path.abspath(db_path)), ARTIFACTS_DIR)


def local_or_proxied_repository(artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None):
    """The artifact repository of an `mlflow-artifacts:` URI: a folder under the sqlite store's
    `mlartifacts`, or MLflow's proxied repository (a tracking server, or inside one)."""
    from mlflow.store.artifact.host_policy import is_tracking_server_process
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository
    from mlflow.tracking._tracking_service.utils import get_tracking_uri

    root = None if is_tracking_server_process() else local_artifact_root(tracking_uri or get_tracking_uri())
    if root is None:
        return MlflowArtifactsRepository(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
    relative = urlparse(artifact_uri).path.lstrip("/")
    return LocalArtifactRepository(os.path.join(root, relative) if relative else root, tracking_uri=tracking_uri,
                                   registry_uri=registry_uri)


def register_resolver() -> None:
    """Resolve `mlflow-artifacts:` with `local_or_proxied_repository` in this process (idempotent)."""
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry

    # MLflow's public plugin API is the entry point; the registry object is how a process that runs
    # without the installed entry point (a source checkout) gets the same behaviour.
    _artifact_repository_registry.register(SCHEME, local_or_proxied_repository)
