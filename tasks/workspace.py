"""Where one pipeline's state lives: the MLflow registry and the checkpoint storage, resolved once; and one
stage's work order in it.

    Workspace.resolve(workdir, storage) -> Workspace(registry, checkpoint_uri, cache_dir, max_attempts)
    StageJob(spec, parent, workspace, key, tokenizer_sha256, imported_sha256, output)

What every task receives (a small, serialisable value), instead of URIs spread over arguments.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import BaseModel

from tasks.config import StageSpec, StorageConfig
from tasks.driver import Checkpoints, Parent
from tasks.registry import ModelRef, Registry, download_with_optimizer
from tasks.store import Storage, open_storage


class Workspace(BaseModel):
    registry: Registry
    checkpoint_uri: str  # storage URI of the in-stage checkpoints (tasks/store/storage.py)
    # this machine's local cache of derived files (token shards, the datasets library's): memory-mapped, so
    # local even when the checkpoints are on S3; rebuilt from the sources when missing or stale
    cache_dir: str
    max_attempts: int = 5  # botocore attempts per S3 call

    @classmethod
    def resolve(cls, workdir: str | Path, storage: StorageConfig | None = None) -> Workspace:
        """The registry (``MLFLOW_TRACKING_URI``, else embedded under ``workdir``) and the checkpoints:
        ``storage.uri`` (default ``<workdir>/checkpoints``; under an ``s3://`` URI, ``<uri>/checkpoints``)."""
        storage = storage or StorageConfig()
        base = (storage.uri or str(Path(workdir).resolve())).rstrip("/")
        remote = base.startswith("s3://")
        checkpoints = f"{base}/checkpoints" if remote or storage.uri is None else base
        return cls(
            registry=Registry.resolve(workdir, storage.uri),
            checkpoint_uri=checkpoints,
            cache_dir=str(Path(workdir).resolve() / "cache"),
            max_attempts=storage.max_attempts,
        )

    def storage(self) -> Storage:
        return open_storage(self.checkpoint_uri, self.max_attempts)

    def parent(self, ref: ModelRef) -> Parent:
        """The driver's view of a registered parent: its weights are fetched (and verified) only when needed."""

        def load():
            with tempfile.TemporaryDirectory(prefix="staged-parent-") as tmp:
                return download_with_optimizer(self.registry, ref, Path(tmp))

        cursors = ref.source_cursors()
        return Parent(ref.n_layers, ref.data_cursor, ref.global_step, load, version=ref.version, data_cursors=cursors)


class StageJob(BaseModel):
    """One stage to train, as its task looked it up: what the task's training, every torchrun rank (as JSON)
    and the registration read, each fact once."""

    spec: StageSpec
    parent: ModelRef | None
    workspace: Workspace
    key: str  # the stage key (tasks/config/identity.py)
    tokenizer_sha256: str | None = None  # the pipeline's tokenizer in storage (None: the byte vocabulary)
    imported_sha256: str | None = None  # an imported stage 1's weights, hashed once by the lookup
    output: str  # the directory the trained version is written into, once (rank 0's under torchrun), and registered

    def checkpoints(self, storage: Storage) -> Checkpoints:
        """The stage's in-stage checkpoints on ``storage``: under its key, at its cadence."""
        return Checkpoints(storage, self.key, self.spec.checkpoint.every, self.spec.checkpoint.keep)
