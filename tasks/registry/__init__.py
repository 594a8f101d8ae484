"""MLflow only: what a version records (schema.py), finding, registering and fetching versions (client.py),
``models:/`` URIs (lookup.py), the pipeline's parent run (runs.py), and the pyfunc flavour (pyfunc.py).

The door of this room: import these names from ``tasks.registry``. No other room names an MLflow tag.
"""

from tasks.registry import schema
from tasks.registry.client import (
    ModelRef,
    Registry,
    delete_orphans,
    download,
    download_with_optimizer,
    fetch,
    finalize,
    find_version,
    get_version,
    metric_history,
    register,
)
from tasks.registry.lookup import (
    UseError,
    load_model,
    load_version,
    open_registry,
    parse_uri,
    registered_model,
    resolve,
    versions,
)
from tasks.registry.pyfunc import add_pyfunc, load_pyfunc, mlflow_uri
from tasks.registry.runs import Pipeline, PipelineRun, StageRunExtras, corpus_input, experiment_id

__all__ = [
    "ModelRef",
    "Pipeline",
    "PipelineRun",
    "Registry",
    "StageRunExtras",
    "UseError",
    "add_pyfunc",
    "corpus_input",
    "delete_orphans",
    "download",
    "download_with_optimizer",
    "experiment_id",
    "fetch",
    "finalize",
    "find_version",
    "get_version",
    "load_model",
    "load_version",
    "load_pyfunc",
    "metric_history",
    "mlflow_uri",
    "open_registry",
    "parse_uri",
    "register",
    "registered_model",
    "resolve",
    "schema",
    "versions",
]
