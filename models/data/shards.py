"""Token shards on disk, and the corpus that reads them memory-mapped.

A token corpus directory holds ``train-00000.bin, ...`` and ``val-00000.bin, ...``: raw little-endian
uint16 token ids (uint32 for a vocabulary over 65,536), one split's documents concatenated in order,
cut into shards of at most ``shard_tokens``; and ``manifest.json``, written last, which names every
shard with its token count and sha256. A directory whose manifest is missing, unreadable, for
another config, tokenizer or source, or whose shards do not match it is not a corpus (``StaleShards``).

:class:`TokenCorpus` maps the shards (``numpy.memmap``) and copies out only the rows a batch asks
for: its own memory is a batch and the epoch's permutation (8 bytes per train chunk), whatever the
corpus's size. The pages it touches are the kernel's page cache, dropped under memory pressure.
"""

from __future__ import annotations

import hashlib
import os
from bisect import bisect_right
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from models.data.bytes import ChunkStream, CorpusError, DataConfig

LAYOUT = 1  # bump when the shard format changes: every cached corpus is then rebuilt
MANIFEST = "manifest.json"
SPLITS = ("train", "val")


class Shard(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str
    tokens: int
    sha256: str


class Split(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    documents: int
    tokens: int
    text_bytes: int  # UTF-8 bytes of the documents' text: bits per byte = bits per token * tokens / text_bytes
    shards: list[Shard]


class SourceFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str  # relative to the source root (models.data.documents.source_root)
    size: int


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    layout: int
    data: DataConfig
    sources: list[SourceFile]
    source_digest: str  # sha256 over every source file's path, size and content
    tokenizer_sha256: str
    vocab_size: int
    dtype: Literal["uint16", "uint32"]
    eos_id: int | None
    train: Split
    val: Split


class StaleShards(Exception):
    """A cache directory that must be rebuilt, never used; the message says why."""


def token_dtype(vocab_size: int) -> Literal["uint16", "uint32"]:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


class ShardWriter:
    """Appends token arrays to one split's shards of ``shard_tokens`` each, hashing what it writes."""

    def __init__(self, directory: Path, split: str, dtype: str, shard_tokens: int):
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, np.dtype(dtype), shard_tokens
        self.pending: list[np.ndarray] = []
        self.n_pending = 0
        self.shards: list[Shard] = []

    def add(self, ids: np.ndarray) -> None:
        self.pending.append(ids.astype(self.dtype, copy=False))
        self.n_pending += len(ids)
        while self.n_pending >= self.shard_tokens:
            tokens = np.concatenate(self.pending)
            self._write(tokens[: self.shard_tokens])
            self.pending, self.n_pending = [tokens[self.shard_tokens :]], len(tokens) - self.shard_tokens

    def close(self) -> list[Shard]:
        if self.n_pending:
            self._write(np.concatenate(self.pending))
        self.pending, self.n_pending = [], 0
        return self.shards

    def _write(self, tokens: np.ndarray) -> None:
        name = f"{self.split}-{len(self.shards):05d}.bin"
        data = tokens.astype(self.dtype.newbyteorder("<"), copy=False).tobytes()
        (self.directory / name).write_bytes(data)
        self.shards.append(Shard(file=name, tokens=len(tokens), sha256=hashlib.sha256(data).hexdigest()))


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Atomically: a reader sees no manifest or the whole one."""
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(manifest.model_dump_json(indent=1) + "\n")
    os.replace(tmp, directory / MANIFEST)


def read_manifest(directory: Path, data: DataConfig, tokenizer_sha256: str, sources: list[SourceFile]) -> Manifest:
    """The manifest of a complete, intact corpus for exactly these inputs; else raises StaleShards."""
    path = directory / MANIFEST
    if not path.is_file():
        raise StaleShards(f"{directory}: no {MANIFEST} (never built, or the build stopped)")
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError) as e:
        raise StaleShards(f"{path}: unreadable ({str(e).splitlines()[0]})") from None
    same_data = manifest.data.model_dump_json() == data.model_dump_json()  # num_proc is no part of it
    if manifest.layout != LAYOUT or not same_data or manifest.tokenizer_sha256 != tokenizer_sha256:
        raise StaleShards(f"{path}: built for another layout, data config or tokenizer")
    if manifest.sources != sources:
        raise StaleShards(f"{path}: the source files changed (names or sizes) since the shards were built")
    itemsize = np.dtype(manifest.dtype).itemsize
    for split in SPLITS:
        info: Split = getattr(manifest, split)
        if sum(s.tokens for s in info.shards) != info.tokens:
            raise StaleShards(f"{path}: {split} shard token counts do not add up to {info.tokens}")
        for shard in info.shards:
            file = directory / shard.file
            if not file.is_file() or file.stat().st_size != shard.tokens * itemsize:
                raise StaleShards(f"{file}: missing or not {shard.tokens * itemsize} bytes")
            if _file_sha256(file) != shard.sha256:
                raise StaleShards(f"{file}: sha256 does not match the manifest")
    return manifest


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class TokenStream:
    """One split's shards as a single sequence of tokens, memory-mapped, never read whole."""

    def __init__(self, directory: Path, shards: list[Shard], dtype: str):
        self.maps = [np.memmap(directory / s.file, dtype=np.dtype(dtype).newbyteorder("<"), mode="r") for s in shards]
        self.ends = np.cumsum([len(m) for m in self.maps]).tolist()  # token offset where each shard ends

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def rows(self, starts: list[int], width: int) -> np.ndarray:
        """The ``width`` tokens from each start, as int64 (B, width); a row may span shards."""
        out = np.empty((len(starts), width), dtype=np.int64)
        for r, start in enumerate(starts):
            shard = bisect_right(self.ends, start)
            pos, filled = start - (self.ends[shard - 1] if shard else 0), 0
            while filled < width:
                piece = self.maps[shard][pos : pos + width - filled]
                out[r, filled : filled + len(piece)] = piece
                filled, shard, pos = filled + len(piece), shard + 1, 0
        return out


class TokenCorpus(ChunkStream):
    """A built token corpus directory behind the byte corpus's interface (``batch``, ``val_batches``, ``digest``)."""

    def __init__(self, directory: Path, manifest: Manifest, context: int, seed: int):
        train, val = (TokenStream(directory, getattr(manifest, s).shards, manifest.dtype) for s in SPLITS)
        if len(train) < context + 1 or len(val) < context + 1:
            raise CorpusError(f"corpus too small for context {context}: {len(train)} train and {len(val)} val tokens")
        super().__init__(context, seed, train, val)
        self.directory, self.manifest = directory, manifest
        self.vocab_size = manifest.vocab_size
        self.bytes_per_token = manifest.val.text_bytes / manifest.val.tokens

    def _rows(self, stream: TokenStream, starts: list[int]) -> torch.Tensor:
        return torch.from_numpy(stream.rows(starts, self.context + 1))  # (B, T+1)

    def digest(self) -> str:
        """sha256 naming the exact train and validation tokens (their dtype and shards' sha256), without rereading."""
        h = hashlib.sha256(self.manifest.dtype.encode())
        for split in SPLITS:
            for shard in getattr(self.manifest, split).shards:
                h.update(f"{split}\0{shard.sha256}\n".encode())
        return h.hexdigest()
