"""In-stage checkpoints: save, find the newest valid one, prune.

    <storage>/<stage_key>/step-<00000012>/
        model.safetensors      weights (gates of a masked ramp are recomputed from the step)
        optimizer.safetensors  AdamW moments + step (models.train.optim layout)
        rng.safetensors        torch RNG state, numpy MT19937 keys
        state.json             step, data cursor, curves, the rest of the RNG states
        manifest.json          sha256 + size of each file above; written LAST

A checkpoint without a manifest is partial (the writer died); one whose files do not match
their manifest is corrupt. Both are skipped with a warning, and the next older one is used.
Everything is safetensors or JSON: nothing loaded back is ever unpickled.

A sharded (FSDP2) model's checkpoint has the same directory, step, RNG and manifest rules, with
each rank's shards in place of model.safetensors and optimizer.safetensors (manifest format 2,
tasks/store/sharded.py). Either format resumes either kind of run: ``latest(..., into=model)``
loads into a sharded model, without ``into`` the weights and moments come back whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

import tasks.store.sharded as sharded
from models.families.lookup import family_of
from models.train.parallel import is_sharded, load_full_state
from models.train.plan import TrainState
from tasks.store.storage import Storage

MANIFEST = "manifest.json"
FORMAT = 1  # whole model.safetensors + optimizer.safetensors; sharded.FORMAT (2): each rank's shards
log = logging.getLogger(__name__)


class CheckpointError(OSError):
    """A checkpoint could not be written; the previous one is intact. One line."""


@dataclass
class Checkpoint:
    step: int
    weights: dict[str, torch.Tensor] | None  # None: already loaded into the sharded model given to latest()
    state: TrainState


def _prefix(key: str, step: int) -> str:
    return f"{key}/step-{step:08d}"


def _encode(model: nn.Module, state: TrainState) -> dict[str, bytes]:
    weights = {k: v.detach().to("cpu").contiguous() for k, v in family_of(model).weights(model).items()}
    return {
        "model.safetensors": st_save(weights),
        "optimizer.safetensors": st_save({k: v.contiguous() for k, v in state.moments.items()}),
        **encode_progress(state),
    }


def encode_progress(state: TrainState) -> dict[str, bytes]:
    """Everything but weights and moments: step, cursor, curves, RNG states (rank 0's under torchrun)."""
    np_name, np_keys, np_pos, np_gauss, np_cached = state.rng["numpy"]
    py_version, py_internal, py_gauss = state.rng["python"]
    rng = {"torch": state.rng["torch"], "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64))}
    meta = {
        "format": FORMAT,
        "step": state.step,
        "cursor": state.cursor,
        "val_loss_init": state.val_loss_init,
        "val_loss": state.val_loss,
        "train_curve": state.train_curve,
        "val_curve": state.val_curve,
        **({"cursors": state.cursors} if state.cursors is not None else {}),  # a mixture's, per source
        "rng": {
            "numpy": [np_name, int(np_pos), int(np_gauss), float(np_cached)],
            "python": [py_version, list(py_internal), py_gauss],
        },
    }
    return {"rng.safetensors": st_save(rng), "state.json": json.dumps(meta).encode()}


def _decode(files: dict[str, bytes], into: torch.nn.Module | None = None) -> Checkpoint:
    """A verified checkpoint's files -> Checkpoint; with ``into`` (a sharded model) the weights go there."""
    weights, moments = None, None
    if json.loads(files[MANIFEST])["format"] == sharded.FORMAT:
        with tempfile.TemporaryDirectory(prefix="staged-shards-") as tmp:
            for name, data in files.items():
                if sharded.is_shard(name):
                    (Path(tmp) / name).write_bytes(data)
            weights, moments = sharded.read(Path(tmp), into)
    else:
        weights, moments = st_load(files["model.safetensors"]), st_load(files["optimizer.safetensors"])
        if into is not None:
            load_full_state(into, weights)
            weights = None
    state = decode_progress(files, moments)
    return Checkpoint(step=state.step, weights=weights, state=state)


def decode_progress(files: dict[str, bytes], moments: dict[str, torch.Tensor]) -> TrainState:
    meta = json.loads(files["state.json"])
    rng = st_load(files["rng.safetensors"])
    np_name, np_pos, np_gauss, np_cached = meta["rng"]["numpy"]
    py_version, py_internal, py_gauss = meta["rng"]["python"]
    state = TrainState(
        step=meta["step"],
        cursor=meta["cursor"],
        moments=moments,
        rng={
            "torch": rng["torch"],
            "numpy": (np_name, rng["numpy_keys"].numpy().astype(np.uint32), np_pos, np_gauss, np_cached),
            "python": (py_version, tuple(py_internal), py_gauss),
        },
        val_loss_init=meta["val_loss_init"],
        val_loss=meta["val_loss"],
        train_curve=[tuple(p) for p in meta["train_curve"]],
        val_curve=[tuple(p) for p in meta["val_curve"]],
        cursors=meta.get("cursors"),
    )
    return state


def save(storage: Storage, key: str, model: nn.Module, state: TrainState) -> None:
    """Write one checkpoint; the manifest goes last, so a crash mid-way leaves a detectably partial one.
    A sharded model: every rank calls this and writes its shards (tasks/store/sharded.py)."""
    prefix = _prefix(key, state.step)
    if is_sharded(model):
        try:
            sharded.save(storage, prefix, key, model, state, encode_progress(state))
        except OSError as e:
            kept = _previous(storage, key, state.step)
            raise CheckpointError(f"checkpoint at step {state.step} not written ({e.strerror or e}); {kept}") from None
        return
    files = _encode(model, state)
    manifest = {
        "format": FORMAT,
        "stage_key": key,
        "step": state.step,
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in files.items()
        },
    }
    try:
        for name, data in files.items():
            storage.put(f"{prefix}/{name}", data)
        storage.put(f"{prefix}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
    except OSError as e:
        raise CheckpointError(
            f"checkpoint at step {state.step} not written ({e.strerror or e}); {_previous(storage, key, state.step)}"
        ) from None


def _previous(storage: Storage, key: str, step: int) -> str:
    """What a failed write leaves, for its message."""
    try:
        previous = [s for s in steps(storage, key) if s < step]
    except OSError:
        return "the earlier checkpoints are as they were"
    return f"checkpoint step {previous[-1]} is intact" if previous else "no earlier checkpoint"


def steps(storage: Storage, key: str) -> list[int]:
    """Steps that have a checkpoint directory (valid or not), oldest first."""
    found = set()
    for name in storage.list(f"{key}/"):
        part = name[len(key) + 1 :].split("/", 1)[0]
        if part.startswith("step-") and part[5:].isdigit():
            found.add(int(part[5:]))
    return sorted(found)


def _verified_files(storage: Storage, key: str, step: int) -> dict[str, bytes] | None:
    """The checkpoint's files when every one is there and matches its manifest; None (with a warning) else."""
    prefix = _prefix(key, step)
    try:
        raw = storage.get(f"{prefix}/{MANIFEST}")
        manifest = json.loads(raw)
    except FileNotFoundError:  # other storage errors (unreachable, 5xx) propagate: they are not "corrupt"
        log.warning("checkpoint %s is partial (no manifest): skipped", prefix)
        return None
    except ValueError as e:
        log.warning("checkpoint %s has an unreadable manifest (%s): skipped", prefix, e)
        return None
    files = {MANIFEST: raw}
    for name, want in manifest.get("files", {}).items():
        try:
            data = storage.get(f"{prefix}/{name}")
        except FileNotFoundError:
            log.warning("checkpoint %s is missing %s: skipped", prefix, name)
            return None
        if hashlib.sha256(data).hexdigest() != want.get("sha256"):
            log.warning("checkpoint %s is corrupt (%s fails its sha256): skipped", prefix, name)
            return None
        files[name] = data
    return files


def _read_valid(storage: Storage, key: str, step: int, into: torch.nn.Module | None) -> Checkpoint | None:
    if (files := _verified_files(storage, key, step)) is None:
        return None
    try:
        return _decode(files, into)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        log.warning("checkpoint %s cannot be decoded (%s): skipped", _prefix(key, step), e)
        return None


def complete(storage: Storage, key: str) -> list[int]:
    """Steps whose checkpoint has its manifest (written last), oldest first."""
    names = set(storage.list(f"{key}/"))
    return [s for s in steps(storage, key) if f"{_prefix(key, s)}/{MANIFEST}" in names]


def location(storage: Storage, key: str, step: int) -> str:
    """Where a checkpoint lives, for messages: ``<storage uri>/<key>/step-<00000012>``."""
    return f"{storage.uri}/{_prefix(key, step)}"


def latest(storage: Storage, key: str, into: torch.nn.Module | None = None) -> Checkpoint | None:
    """The newest checkpoint whose every file matches its manifest; None when there is none.

    ``into``: a sharded model (every rank calls this, and each ends with its shards of the weights and
    moments, whatever world size or format wrote them); without it, whole tensors.
    """
    for step in reversed(steps(storage, key)):
        if (found := _read_valid(storage, key, step, into)) is not None:
            return found
    return None


def _verifies(storage: Storage, key: str, step: int) -> bool:
    return _verified_files(storage, key, step) is not None


def prune(storage: Storage, key: str, keep: int, written: int | None = None) -> list[int]:
    """Keep the newest ``keep`` checkpoints that *verify* (always including ``written``, the step just
    saved); delete the rest, the invalid ones (partial, corrupt, undecodable) first. Returns the deleted steps.

    Validity is checked, not assumed from a manifest's presence: a corrupt newer step never pushes out
    the only good one. Each victim's manifest goes first, so a prune that dies half-way leaves a partial
    checkpoint, never one that looks valid but is not.
    """
    names = set(storage.list(f"{key}/"))
    all_steps = steps(storage, key)
    valid = [s for s in all_steps if s == written or _verifies(storage, key, s)]
    kept = set(valid[-keep:]) | ({written} if written is not None else set())
    invalid = [s for s in all_steps if s not in valid]
    victims = invalid + [s for s in valid if s not in kept]
    for step in victims:
        files = sorted(n for n in names if n.startswith(f"{_prefix(key, step)}/"))
        manifest = [n for n in files if n.endswith(f"/{MANIFEST}")]
        storage.delete(manifest)
        storage.delete([n for n in files if n not in manifest])
    return victims
