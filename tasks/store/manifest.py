"""One sha256 manifest over a whole model directory: every file in it, whatever it is.

    digest = write_manifest(directory)    # before upload: lists each file's sha256 and size
    verify_manifest(directory, digest)    # after download, before anything is read or executed

The manifest is ``staged-manifest.json`` inside the directory: ``{"files": {relative path: {"sha256",
"bytes"}}}``, written canonically (sorted keys), so its own sha256 names the directory's exact content.
The registry records that sha256 in a version tag; a downloaded directory is trusted only when its
manifest hashes to the tag *and* every file matches the manifest *and* there is no file the manifest
does not list. Weights, config, optimizer moments, tokenizer files, the pyfunc code (``pyfunc_model.py``,
``code/``, ``MLmodel``, requirements): it does not matter which, so a new kind of file is covered
without a change here. Nothing is unpickled and no code runs before the check passes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from models.errors import UserError
from tasks.store.storage import fsync

MANIFEST_FILE = "staged-manifest.json"
# MLflow's own loader, given ``models:/…`` on a local store, writes this file (the version's name and number)
# into the stored directory itself. It is not part of the version: never listed, never read (``fetch`` drops it).
MLFLOW_META = "registered_model_meta"


class IntegrityError(UserError, ValueError):
    """A directory that does not match its registered manifest (or has none); the message is one line."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(directory: Path) -> dict[str, Path]:
    """Every entry below ``directory`` but the manifest, by POSIX relative path; links are refused."""
    found = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_symlink():
            raise IntegrityError(f"{directory}: {rel} is a symbolic link; a model directory holds plain files only")
        if path.is_file() and rel not in (MANIFEST_FILE, MLFLOW_META):
            found[rel] = path
    return found


def manifest_of(directory: Path, known: dict[str, str] | None = None) -> bytes:
    """The canonical manifest of what ``directory`` holds now. ``known``: sha256s (by relative path) of files
    the caller has just written and hashed itself, so the bytes are hashed once, not twice."""
    known = known or {}
    files = {
        rel: {"sha256": known.get(rel) or sha256_file(p), "bytes": p.stat().st_size}
        for rel, p in _files(directory).items()
    }
    return json.dumps({"format": 1, "files": files}, sort_keys=True, indent=1).encode() + b"\n"


def write_manifest(directory: Path, known: dict[str, str] | None = None, durable: bool = False) -> str:
    """Write ``staged-manifest.json`` over everything in ``directory``; return the manifest's sha256.
    ``durable``: every file and folder is flushed to the disk first, the manifest last (a version written in
    place where the registry keeps it)."""
    data = manifest_of(directory, known)
    if durable:
        for rel in json.loads(data)["files"]:
            fsync(directory / rel)
    (directory / MANIFEST_FILE).write_bytes(data)
    if durable:
        fsync(directory / MANIFEST_FILE)
        for folder in {directory, *(p for p in directory.rglob("*") if p.is_dir())}:
            fsync(folder)
    return hashlib.sha256(data).hexdigest()


def verify_manifest(directory: Path, expected: str | None, what: str = "") -> dict[str, str]:
    """Refuse ``directory`` unless it is exactly what the manifest with sha256 ``expected`` lists.

    ``what`` names the directory in messages (e.g. ``model 'm' version 3``). A missing ``expected`` is a
    refusal too: an unverifiable version is never loaded. Returns each file's verified sha256 (by relative
    path), so a reader need not hash a file again to check it against a tag."""
    what = what or str(directory)
    if not expected:
        raise IntegrityError(f"{what}: no manifest sha256 is registered for it; refusing to load an unverified model")
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise IntegrityError(f"{what}: {MANIFEST_FILE} is missing; refusing to load it")
    data = path.read_bytes()
    if (actual := hashlib.sha256(data).hexdigest()) != expected:
        raise IntegrityError(
            f"{what}: {MANIFEST_FILE} sha256 {actual[:12]}… does not match the registered {expected[:12]}…"
        )
    try:
        listed = json.loads(data)["files"]
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"{what}: {MANIFEST_FILE} is not a manifest") from None
    present = _files(directory)
    if extra := sorted(set(present) - set(listed)):
        raise IntegrityError(f"{what}: {extra[0]} is not in its manifest; refusing to load it")
    for rel, want in sorted(listed.items()):
        if rel not in present:
            raise IntegrityError(f"{what}: {rel} is missing; refusing to load it")
        if present[rel].stat().st_size != want.get("bytes") or sha256_file(present[rel]) != want.get("sha256"):
            raise IntegrityError(f"{what}: {rel} does not match its sha256 in the manifest; refusing to load it")
    return {rel: want["sha256"] for rel, want in listed.items()}
