"""Where a run's files live, with no Prefect and no MLflow: local or S3 storage (storage.py), in-stage
checkpoints on it (checkpoint.py), model directories on disk (model_dir.py; Hugging Face ones: hf_dir.py)
and their sha256 manifest (manifest.py), the pipeline's tokenizer on it (tokenizer_store.py), and the one
redaction of credentials in URIs (redact.py).

The door of this room: import these names from ``tasks.store``.
"""

from tasks.store import checkpoint, hf_dir, tokenizer_store
from tasks.store.checkpoint import CheckpointError
from tasks.store.manifest import (
    MANIFEST_FILE,
    MLFLOW_META,
    IntegrityError,
    sha256_file,
    verify_manifest,
    write_manifest,
)
from tasks.store.model_dir import (
    CONFIG,
    OPTIMIZER,
    WEIGHTS,
    WeightsMismatch,
    imported_sha256,
    load_optimizer,
    load_state,
    load_tokenizer,
    save_model,
    save_optimizer,
)
from tasks.store.redact import redact
from tasks.store.storage import (
    LocalStorage,
    S3Storage,
    Storage,
    StorageError,
    StorageUnusable,
    check_uri,
    fsync,
    local_dir,
    open_storage,
    s3_client,
)

__all__ = [
    "CONFIG",
    "OPTIMIZER",
    "WEIGHTS",
    "MANIFEST_FILE",
    "MLFLOW_META",
    "CheckpointError",
    "IntegrityError",
    "LocalStorage",
    "S3Storage",
    "Storage",
    "StorageError",
    "StorageUnusable",
    "WeightsMismatch",
    "tokenizer_store",
    "check_uri",
    "checkpoint",
    "fsync",
    "hf_dir",
    "local_dir",
    "imported_sha256",
    "load_optimizer",
    "load_state",
    "load_tokenizer",
    "open_storage",
    "redact",
    "s3_client",
    "save_model",
    "save_optimizer",
    "sha256_file",
    "verify_manifest",
    "write_manifest",
]
