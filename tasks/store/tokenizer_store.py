"""A pipeline's tokenizer in storage, so that every stage (and every torchrun rank) reads the one the flow
resolved, trained once: ``<storage>/tokenizers/<sha256>/tokenizer.json``, verified when read back.

The byte vocabulary is never stored: it is a constant of the code (models/data/tokenizer.py).
"""

from __future__ import annotations

from tokenizers import Tokenizer

from models.data import tokenizer as tokenizers
from tasks.store.manifest import IntegrityError
from tasks.store.storage import Storage


class TokenizerMismatch(IntegrityError):
    """A stored tokenizer whose content does not match its sha256 (it stays so: never retried); one line."""


def _key(sha: str) -> str:
    return f"tokenizers/{sha}/{tokenizers.TOKENIZER_FILE}"


def put(storage: Storage, tok: Tokenizer) -> str:
    """Store ``tok`` under its sha256 (unless it is the byte vocabulary); return the sha256."""
    sha = tokenizers.sha256(tok)
    if sha != tokenizers.sha256(tokenizers.byte_tokenizer()):
        storage.put(_key(sha), tok.to_str().encode())
    return sha


def get(storage: Storage, sha: str) -> Tokenizer:
    """The tokenizer stored under ``sha``, verified (the byte vocabulary needs no storage)."""
    byte = tokenizers.byte_tokenizer()
    if sha == tokenizers.sha256(byte):
        return byte
    tok = tokenizers.from_str(storage.get(_key(sha)).decode())
    if (actual := tokenizers.sha256(tok)) != sha:
        raise TokenizerMismatch(f"stored tokenizer {sha[:12]}… has sha256 {actual[:12]}…: refusing it")
    return tok
