"""MLflow only: what a version records (schema.py), finding and registering versions (client.py),
reading them, verified (fetch.py),
``models:/`` URIs (lookup.py), the pipeline's parent run (runs.py), system metrics while a stage trains
(monitor.py), the pyfunc flavour (pyfunc.py), and
the gate's lease (lease.py).

The door of this room: import these names from ``tasks.registry``. No other room names an MLflow tag.
"""

from tasks.registry import schema
from tasks.registry.client import (
    ModelRef,
    Registry,
    delete_orphans,
    finalize,
    find_version,
    get_version,
    log_scores,
    metric_history,
    read_scores,
    register,
)
from tasks.registry.fetch import Fetched, download_with_optimizer, fetch
from tasks.registry.lease import LeaseTimeout, lease
from tasks.registry.lookup import (
    UseError,
    load_model,
    load_version,
    open_registry,
    parse_uri,
    registered_model,
    resolve,
    version_ref,
    versions,
)
from tasks.registry.monitor import training_run
from tasks.registry.pyfunc import add_pyfunc, load_pyfunc, verified_copy
from tasks.registry.runs import Pipeline, PipelineRun, StageRunExtras, corpus_input, experiment_id

__all__ = [
    "Fetched",
    "LeaseTimeout",
    "ModelRef",
    "Pipeline",
    "PipelineRun",
    "Registry",
    "StageRunExtras",
    "UseError",
    "add_pyfunc",
    "corpus_input",
    "delete_orphans",
    "download_with_optimizer",
    "experiment_id",
    "fetch",
    "finalize",
    "find_version",
    "get_version",
    "lease",
    "load_model",
    "load_version",
    "load_pyfunc",
    "log_scores",
    "metric_history",
    "read_scores",
    "open_registry",
    "parse_uri",
    "register",
    "registered_model",
    "resolve",
    "schema",
    "training_run",
    "verified_copy",
    "version_ref",
    "versions",
]
