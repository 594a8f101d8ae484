"""Where a run's files live, with no Prefect and no MLflow: local or S3 storage (storage.py), in-stage
checkpoints on it (checkpoint.py), and model directories on disk (model_dir.py).

The door of this room: import these names from ``tasks.store``.
"""

from tasks.store import checkpoint
from tasks.store.checkpoint import CheckpointError
from tasks.store.model_dir import (
    CONFIG,
    OPTIMIZER,
    WEIGHTS,
    WeightsMismatch,
    load_optimizer,
    load_state,
    save_model,
    save_optimizer,
    sha256_file,
)
from tasks.store.storage import LocalStorage, S3Storage, Storage, StorageError, check_uri, open_storage, s3_client

__all__ = [
    "CONFIG",
    "OPTIMIZER",
    "WEIGHTS",
    "CheckpointError",
    "LocalStorage",
    "S3Storage",
    "Storage",
    "StorageError",
    "WeightsMismatch",
    "check_uri",
    "checkpoint",
    "load_optimizer",
    "load_state",
    "open_storage",
    "s3_client",
    "save_model",
    "save_optimizer",
    "sha256_file",
]
