"""A pipeline's tokenizer in storage, so that every stage (and every torchrun rank) reads the one the flow
resolved, trained once: ``<storage>/tokenizers/<sha256>/tokenizer.json``, verified when read back.

The byte vocabulary is never stored: it is a constant of the code (models/data/tokenizer.py).
"""

from __future__ import annotations

from models.data import tokenizer as tokenizers
from models.data.tokenizer import Vocabulary
from tasks.store.manifest import IntegrityError
from tasks.store.storage import Storage


class TokenizerMismatch(IntegrityError):
    """A stored tokenizer whose content does not match its sha256 (it stays so: never retried); one line."""


def _key(sha: str) -> str:
    return f"tokenizers/{sha}/{tokenizers.TOKENIZER_FILE}"


def put(storage: Storage, vocabulary: Vocabulary) -> str | None:
    """Store the tokenizer under its sha256; return its identity (None for the byte vocabulary: nothing stored)."""
    if not vocabulary.is_bytes:
        storage.put(_key(vocabulary.sha256), vocabulary.tokenizer.to_str().encode())
    return vocabulary.identity


def get(storage: Storage, sha: str | None) -> Vocabulary:
    """The tokenizer stored under ``sha``, verified (None or the byte vocabulary's sha256: no storage read)."""
    if sha is None or sha == Vocabulary.bytes().sha256:
        return Vocabulary.bytes()
    found = Vocabulary.of(tokenizers.from_str(storage.get(_key(sha)).decode()))
    if found.sha256 != sha:
        raise TokenizerMismatch(f"stored tokenizer {sha[:12]}… has sha256 {found.sha256[:12]}…: refusing it")
    return found
