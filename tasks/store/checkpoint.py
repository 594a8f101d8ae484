"""In-stage checkpoints: save, find the newest valid one, prune.

    <storage>/<stage_key>/step-<00000012>/
        model.safetensors      weights (gates of a masked ramp are recomputed from the step)
        optimizer.safetensors  AdamW moments + step (models.optim layout)
        rng.safetensors        torch RNG state, numpy MT19937 keys
        state.json             step, data cursor, curves, the rest of the RNG states
        manifest.json          sha256 + size of each file above; written LAST

A checkpoint without a manifest is partial (the writer died); one whose files do not match
their manifest is corrupt. Both are skipped with a warning, and the next older one is used.
Everything is safetensors or JSON: nothing loaded back is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from models.gpt import GPT
from models.plan import TrainState
from tasks.store.storage import Storage

MANIFEST = "manifest.json"
FORMAT = 1
log = logging.getLogger(__name__)


class CheckpointError(OSError):
    """A checkpoint could not be written; the previous one is intact. One line."""


@dataclass
class Checkpoint:
    step: int
    weights: dict[str, torch.Tensor]
    state: TrainState


def _prefix(key: str, step: int) -> str:
    return f"{key}/step-{step:08d}"


def _encode(model: GPT, state: TrainState) -> dict[str, bytes]:
    weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
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
        "rng": {
            "numpy": [np_name, int(np_pos), int(np_gauss), float(np_cached)],
            "python": [py_version, list(py_internal), py_gauss],
        },
    }
    return {
        "model.safetensors": st_save(weights),
        "optimizer.safetensors": st_save({k: v.contiguous() for k, v in state.moments.items()}),
        "rng.safetensors": st_save(rng),
        "state.json": json.dumps(meta).encode(),
    }


def _decode(files: dict[str, bytes]) -> Checkpoint:
    meta = json.loads(files["state.json"])
    rng = st_load(files["rng.safetensors"])
    np_name, np_pos, np_gauss, np_cached = meta["rng"]["numpy"]
    py_version, py_internal, py_gauss = meta["rng"]["python"]
    state = TrainState(
        step=meta["step"],
        cursor=meta["cursor"],
        moments=st_load(files["optimizer.safetensors"]),
        rng={
            "torch": rng["torch"],
            "numpy": (np_name, rng["numpy_keys"].numpy().astype(np.uint32), np_pos, np_gauss, np_cached),
            "python": (py_version, tuple(py_internal), py_gauss),
        },
        val_loss_init=meta["val_loss_init"],
        val_loss=meta["val_loss"],
        train_curve=[tuple(p) for p in meta["train_curve"]],
        val_curve=[tuple(p) for p in meta["val_curve"]],
    )
    return Checkpoint(step=meta["step"], weights=st_load(files["model.safetensors"]), state=state)


def save(storage: Storage, key: str, model: GPT, state: TrainState) -> None:
    """Write one checkpoint; the manifest goes last, so a crash mid-way leaves a detectably partial one."""
    prefix = _prefix(key, state.step)
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
        previous = [s for s in steps(storage, key) if s < state.step]
        kept = f"checkpoint step {previous[-1]} is intact" if previous else "no earlier checkpoint"
        raise CheckpointError(f"checkpoint at step {state.step} not written ({e.strerror or e}); {kept}") from None


def steps(storage: Storage, key: str) -> list[int]:
    """Steps that have a checkpoint directory (valid or not), oldest first."""
    found = set()
    for name in storage.list(f"{key}/"):
        part = name[len(key) + 1 :].split("/", 1)[0]
        if part.startswith("step-") and part[5:].isdigit():
            found.add(int(part[5:]))
    return sorted(found)


def _read_valid(storage: Storage, key: str, step: int) -> Checkpoint | None:
    prefix = _prefix(key, step)
    try:
        manifest = json.loads(storage.get(f"{prefix}/{MANIFEST}"))
    except FileNotFoundError:  # other storage errors (unreachable, 5xx) propagate: they are not "corrupt"
        log.warning("checkpoint %s is partial (no manifest): skipped", prefix)
        return None
    except ValueError as e:
        log.warning("checkpoint %s has an unreadable manifest (%s): skipped", prefix, e)
        return None
    files = {}
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
    try:
        return _decode(files)
    except (KeyError, ValueError, TypeError) as e:
        log.warning("checkpoint %s cannot be decoded (%s): skipped", prefix, e)
        return None


def complete(storage: Storage, key: str) -> list[int]:
    """Steps whose checkpoint has its manifest (written last), oldest first."""
    names = set(storage.list(f"{key}/"))
    return [s for s in steps(storage, key) if f"{_prefix(key, s)}/{MANIFEST}" in names]


def location(storage: Storage, key: str, step: int) -> str:
    """Where a checkpoint lives, for messages: ``<storage uri>/<key>/step-<00000012>``."""
    return f"{storage.uri}/{_prefix(key, step)}"


def latest(storage: Storage, key: str) -> Checkpoint | None:
    """The newest checkpoint whose every file matches its manifest; None when there is none."""
    for step in reversed(steps(storage, key)):
        if (found := _read_valid(storage, key, step)) is not None:
            return found
    return None


def _verifies(storage: Storage, key: str, step: int) -> bool:
    return _read_valid(storage, key, step) is not None


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
