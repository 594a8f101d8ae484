"""In-stage checkpoints of a sharded (FSDP2) model, with torch.distributed.checkpoint: each rank writes its shards.

    <storage>/<stage_key>/step-<00000012>/
        shard-<00001>-model-00001-of-00001.safetensors  one per rank (shard-<rank + 1>-…): its shards of the
                                                         weights (model.<name>) and AdamW moments (exp_avg.<name>,
                                                         exp_avg_sq.<name>, step), each shard's offsets in the header
        rng.safetensors, state.json                      rank 0, as in one process (tasks/store/checkpoint.py)
        manifest.json                                    format 2: sha256 + size of every file, all ranks'; LAST

DCP writes to a file system, so each rank saves into a local temporary directory
(``HuggingFaceStorageWriter(save_distributed=True)``) and puts its own files through the Storage: a
local directory, or S3 (one upload per file). Rank 0 puts the manifest only after every rank has
reported its files written, so a checkpoint that lacks a rank's shards has no manifest (partial, and
skipped like any other). A rank that fails to write makes every rank raise: none trains on alone.

``read``: the verified files in a local directory, read back with ``HuggingFaceStorageReader``
(safetensors headers and JSON: nothing is unpickled). Every rank fetches and verifies every file
(tasks/store/checkpoint.py): simple and N times the reads, where a rank needs only the files whose
chunks overlap its shards (any of them, after resharding). DCP places each saved chunk by its offsets, so
a checkpoint written by N ranks loads into a model sharded over M ranks (resharded), or whole into
one process, DDP ranks included.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from models.train.parallel import gather_json, load_sharded_state, sharded_state
from models.train.plan import TrainState
from tasks.store.storage import Storage

FORMAT = 2
SUFFIX = ".safetensors"
WEIGHT = "model."  # prefix of the weights in the shard files; the moments keep models.train.optim's names


def is_shard(name: str) -> bool:
    """A rank's shard file (DCP's HuggingFaceStorageWriter names them shard-<rank + 1>-model-…)."""
    return name.startswith("shard-") and name.endswith(SUFFIX)


def _entry(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _agree(error: str) -> None:
    """Raise on every rank (OSError, one line) when any rank reports an error."""
    if errors := [e for e in gather_json(error) if e]:
        raise OSError(errors[0])


def save(storage: Storage, prefix: str, key: str, model: nn.Module, state: TrainState, progress: dict) -> None:
    """Every rank: write its shards under ``prefix``; rank 0 adds ``progress`` (RNG, curves) and, once
    every rank's files are in, the manifest. OSError (the same on every rank) when any write failed."""
    import torch.distributed.checkpoint as dcp  # ~1.7 s to import: only where a model is sharded

    rank = dist.get_rank()
    tensors = {**{WEIGHT + k: v for k, v in sharded_state(model).items()}, **state.moments}
    with tempfile.TemporaryDirectory(prefix="staged-dcp-") as tmp:
        dcp.save(tensors, storage_writer=dcp.HuggingFaceStorageWriter(tmp, save_distributed=True))
        files = {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if is_shard(p.name)}
    if rank == 0:
        files.update(progress)
    written, error = {}, ""
    try:
        for name, data in files.items():
            storage.put(f"{prefix}/{name}", data)
            written[name] = _entry(data)
    except OSError as e:
        error = f"rank {rank}: {str(e.strerror or e).splitlines()[0]}"
    reports = gather_json({"files": written, "error": error})
    if errors := [r["error"] for r in reports if r["error"]]:
        raise OSError(errors[0])
    error = ""
    if rank == 0:
        every = {name: entry for r in reports for name, entry in r["files"].items()}
        manifest = {"format": FORMAT, "stage_key": key, "step": state.step, "world_size": len(reports), "files": every}
        try:
            storage.put(f"{prefix}/manifest.json", json.dumps(manifest, indent=1).encode())
        except OSError as e:
            error = f"manifest: {str(e.strerror or e).splitlines()[0]}"
    _agree(error)


def read(directory: Path, into: nn.Module | None = None) -> tuple[dict[str, torch.Tensor] | None, dict]:
    """(weights, moments) from a verified checkpoint's shard files in ``directory``.

    ``into``: a sharded model (collective): it receives its shards of the weights (weights come back
    None) and the moments come back as DTensors shaped like its parameters. Without it: whole tensors,
    read by this process alone.
    """
    import torch.distributed.checkpoint as dcp

    reader = dcp.HuggingFaceStorageReader(str(directory))
    if into is None:
        meta = reader.read_metadata().state_dict_metadata
        template = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items()}
        dcp.load(template, storage_reader=dcp.HuggingFaceStorageReader(str(directory)), no_dist=True)
    else:
        template = {WEIGHT + k: v for k, v in sharded_state(into).items()}
        for name, p in into.named_parameters():
            template[f"exp_avg.{name}"] = torch.zeros_like(p)
            template[f"exp_avg_sq.{name}"] = torch.zeros_like(p)
        template["step"] = torch.zeros((), dtype=torch.float64)
        for k in dcp.HuggingFaceStorageReader(str(directory)).read_metadata().state_dict_metadata:
            if k.startswith("step."):  # a parameter's own Adam step, where it differs (models/train/optim.py)
                template[k] = torch.zeros((), dtype=torch.float64)
        dcp.load(template, storage_reader=reader)
    weights = {k[len(WEIGHT) :]: v for k, v in template.items() if k.startswith(WEIGHT)}
    moments = {k: v for k, v in template.items() if not k.startswith(WEIGHT)}
    if into is None:
        return weights, moments
    load_sharded_state(into, weights)
    return None, moments
