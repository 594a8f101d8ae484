"""Reading a registered version: its directory, verified against its manifest before anything reads it.

local, sha256 = fetch(registry, ref, dst)        # in place on this disk, else downloaded into dst
cfg, state, moments = download_with_optimizer(registry, ref, dst)   # ... read, checked against their tags
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import mlflow

from tasks.registry.client import ModelRef, Registry
from tasks.store import MLFLOW_META, load_optimizer, load_state, local_dir, verify_manifest


class Fetched(NamedTuple):
    path: Path  # the version's directory on this machine, verified
    sha256: dict[str, str]  # each file's sha256 (relative path), as its manifest lists and the check found them


def fetch(registry: Registry, ref: ModelRef, dst: Path, copy: bool = False) -> Fetched:
    """A version's directory, verified against its manifest tag before anything reads it; IntegrityError (one
    line) when a file differs, is missing or extra, or the version has no manifest tag. A store on this disk is
    read where it is, each byte hashed once (``copy``: into ``dst`` all the same); any other is downloaded
    into ``dst``."""
    what = f"model {ref.name!r} version {ref.version}"
    if not copy and (stored := local_dir(ref.source)) is not None and stored.is_dir():
        return Fetched(stored, verify_manifest(stored, ref.manifest_sha256, what))
    uri = registry.tracking_uri
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.source, dst_path=str(dst), tracking_uri=uri))
    hashes = verify_manifest(local, ref.manifest_sha256, what)
    (local / MLFLOW_META).unlink(missing_ok=True)  # MLflow's note, not the version's: nothing reads it from here
    return Fetched(local, hashes)


def download_with_optimizer(registry: Registry, ref: ModelRef, dst: Path):
    """(model config, state dict, AdamW moments or None), from a verified directory."""
    local, hashes = fetch(registry, ref, dst)
    cfg, state = load_state(local, ref.weights_sha256, hashes)
    return cfg, state, load_optimizer(local, ref.optimizer_sha256, hashes)
