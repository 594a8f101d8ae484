"""A deterministic byte-level corpus with a resumable cursor.

The default corpus is the running interpreter's own standard library (``*.py`` files), which
is on every machine that can run this code, so nothing is downloaded. Files are sorted and
split into train and validation *by file*, so no validation text leaks into training.

Training batches are drawn through a cursor: the number of sequences consumed so far. The
stream of sequences is a fixed, seeded permutation of the non-overlapping train chunks, one
permutation per epoch, so ``batch(cursor, B)`` is a pure function of (corpus, seed, cursor).
A stage that starts at the previous stage's end cursor continues the stream: no sequence is
replayed within an epoch. :class:`ChunkStream` is that cursor; :class:`ByteCorpus` feeds it
bytes, ``models.data.shards.TokenCorpus`` memory-mapped token shards (``models.data.corpus.open_corpus``
picks one from ``DataConfig.format``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import sysconfig
from collections.abc import Iterator
from itertools import accumulate
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from models.errors import UserError


class CorpusConfig(BaseModel):
    """One corpus: where its files are, how they are read, which are validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str | None = None  # a text file or a directory; None = this interpreter's stdlib
    glob: str = "**/*.py"  # files taken from a directory source
    val_every: int = Field(20, ge=2)  # every 20th file (5%) is validation; with a tokenizer: every 20th document
    max_bytes: int | None = Field(None, ge=1)  # cap on corpus bytes read (of documents' UTF-8 text when tokenized)
    # bytes: raw bytes, no tokenizer (the byte GPT). text | jsonl | parquet: documents read with the `datasets`
    # library and tokenized once into cached token shards (models/data/corpus.py)
    format: Literal["bytes", "text", "jsonl", "parquet"] = "bytes"
    text_field: str = "text"  # jsonl / parquet: the field (column) holding a document's text
    # text: what one document is. A file by default (the by-file split of the byte corpus); a single
    # large file splits into paragraphs ("\n\n") or lines instead
    text_unit: Literal["document", "paragraph", "line"] = "document"
    # text / jsonl: undecodable bytes are an error by default (silently replaced text would train the
    # model on U+FFFD); "replace" accepts them, e.g. the stdlib's few Latin-1 and KOI8-R test files
    encoding_errors: Literal["strict", "replace"] = "strict"
    eos_token: str | None = None  # a token appended to every document (e.g. "<|endoftext|>"); None = none

    @model_validator(mode="after")
    def _source_for_documents(self):
        if self.format in ("jsonl", "parquet") and self.source is None:
            raise ValueError(f"data.format {self.format} needs data.source (a file or a directory)")
        return self


class SourceConfig(CorpusConfig):
    """One of ``data.sources``: a corpus with a name (per-stage weights and cursors use it) and a weight."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    weight: float = Field(gt=0, allow_inf_nan=False)  # share of the train sequences, relative to the others

    def corpus(self, num_proc: int = 1) -> DataConfig:
        return DataConfig(**self.model_dump(exclude={"name", "weight"}), num_proc=num_proc)


class DataConfig(CorpusConfig):
    """``data``: one corpus (``data.source`` and its fields), or a weighted mixture (``data.sources``)."""

    # a weighted mixture (models/data/mixture.py); each stage may reweigh it (stages.<i>.data.weights). None: one corpus
    sources: list[SourceConfig] | None = Field(None, min_length=1)
    # processes that tokenize documents into shards (models/data/encode.py): the shards are the same for any number,
    # so it is in no hash, cache key or tag (left out of the serialized config)
    num_proc: int = Field(1, ge=1, le=256)

    @model_validator(mode="after")
    def _one_or_many(self) -> DataConfig:
        if self.sources is None:
            return self
        beside = sorted(self.model_fields_set - {"sources", "val_every", "num_proc"})
        if beside:
            raise ValueError(f"data.sources: set {', '.join(beside)} per source, not beside data.sources")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data.sources: names must be unique, got {names}")
        return self

    @model_serializer(mode="wrap")
    def _one_corpus_without_sources(self, handler):
        out = handler(self)
        out.pop("num_proc", None)
        # a one-corpus config serializes without a `sources` key: its stage keys and shard caches do not depend on it
        if self.sources is None:
            out.pop("sources", None)
        return out

    @property
    def formats(self) -> set[str]:
        return {s.format for s in self.sources} if self.sources else {self.format}

    def reweighed(self, weights: dict[str, float]) -> DataConfig:
        """The mixture with ``weights`` (by source name) replacing those sources' weights; a source weighed 0
        leaves this mixture (its cursor waits for a later stage)."""
        if self.sources is None:
            raise ValueError("data.weights reweighs data.sources: this pipeline has one data.source")
        known = {s.name for s in self.sources}
        if unknown := sorted(set(weights) - known):
            raise ValueError(f"data.weights: no source named {', '.join(unknown)} (data.sources: {sorted(known)})")
        kept = [s.model_copy(update={"weight": float(weights.get(s.name, s.weight))}) for s in self.sources]
        kept = [s for s in kept if s.weight > 0]
        if not kept:
            raise ValueError("data.weights: every source weighed 0; at least one needs a weight > 0")
        return self.model_copy(update={"sources": kept})


class StageData(BaseModel):
    """``stages.<i>.data``: this stage's departures from ``data``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # data.sources reweighed for this stage, by source name (unnamed ones keep data.sources' weight; 0 leaves
    # a source out of this stage, its cursor waiting); part of the stage key through the resolved mixture
    weights: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = {}


class CorpusError(UserError, ValueError):
    """A corpus that cannot be used as given (malformed record, empty, too small): one line, for the CLI."""


class UnreadableFile(UserError, FileNotFoundError):
    """A source file that exists but cannot be opened or read: one line naming it."""


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _matching(root: Path, pattern: str) -> Iterator[Path]:
    """``root.glob(pattern)`` outside any ``site-packages`` directory. The default ``**/NAME`` (NAME without a
    slash) walks the tree without descending into ``site-packages`` at all: pathlib's glob would list every
    installed package's files first (the stdlib's ``site-packages``: 10k+ files, ~0.3 s per corpus opened).
    Same semantics as pathlib's: symlinked directories are not followed, ``*`` matches a leading dot."""
    name = pattern.removeprefix("**/")
    if name == pattern or "/" in name or "**" in name or os.sep != "/":
        yield from (p for p in root.glob(pattern) if "site-packages" not in p.parts)
        return
    if "site-packages" in root.parts:
        return
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "site-packages"]
        yield from (Path(top, f) for f in files if f != "site-packages" and fnmatch.fnmatchcase(f, name))


def list_files(cfg: DataConfig) -> list[Path]:
    root = Path(cfg.source) if cfg.source else stdlib_dir()
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"data source {str(root)!r} is neither a file nor a directory")
    files = sorted(p for p in _matching(root, cfg.glob) if p.is_file())
    if not files:
        raise FileNotFoundError(f"data source {str(root)!r} has no files matching {cfg.glob!r}")
    return files


def read_prefix(path: Path, limit: int | None) -> bytes:
    """The first ``limit`` bytes of a file (all of it for None), reading no further than that."""
    try:
        with path.open("rb") as f:
            return f.read(-1 if limit is None else limit)
    except OSError as e:
        raise UnreadableFile(f"cannot read data file {str(path)!r}: {e.strerror or e}") from None


class ChunkStream:
    """The cursor over a train and a validation stream cut into non-overlapping chunks of ``context + 1``.

    ``train`` and ``val`` are anything with a length that the subclass's ``_rows(stream, starts)``
    reads: the (B, context + 1) int64 rows starting at those offsets.
    """

    bytes_per_token = 1.0  # text bytes per item of the validation stream: nats per byte = loss / bytes_per_token
    vocab_size = 256  # the byte vocabulary; a token corpus has its tokenizer's

    def __init__(self, context: int, seed: int, train, val):
        self.context, self.seed, self.train, self.val = context, seed, train, val
        self.n_train = len(train) // (context + 1)
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _rows(self, stream, starts: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def cursors(self, cursor: int) -> None:
        """One source: the global cursor is its own (a mixture's has one per source: models/data/mixture.py)."""
        return None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n_train, generator=gen), epoch
        return self._perm

    def _chunks(self, stream, starts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        seq = self._rows(stream, starts)  # (B, T+1)
        return seq[:, :-1], seq[:, 1:]  # inputs (B, T), targets (B, T)

    def batch(self, cursor: int, batch_size: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``batch_size`` sequences at positions cursor .. cursor+batch_size-1 of the train stream.

        With ``world`` > 1 (data parallel), rank ``rank``'s contiguous 1/world of them: the ranks'
        slices, in rank order, are exactly the global batch, and the cursor advances by ``batch_size``.
        """
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by {world} processes")
        local = batch_size // world
        starts = []
        for g in range(cursor + rank * local, cursor + (rank + 1) * local):
            epoch, pos = divmod(g, self.n_train)
            starts.append(int(self._permutation(epoch)[pos]) * (self.context + 1))
        return self._chunks(self.train, starts)

    def val_batches(self, n_batches: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed set of validation batches, spread evenly over the validation stream."""
        n_val = len(self.val) // (self.context + 1)
        wanted = n_batches * batch_size
        stride = max(1, n_val // wanted)
        starts = [(i * stride % n_val) * (self.context + 1) for i in range(wanted)]
        return [self._chunks(self.val, starts[b * batch_size : (b + 1) * batch_size]) for b in range(n_batches)]


class ByteCorpus(ChunkStream):
    """Train and validation byte streams, chunked into sequences of ``context + 1`` bytes."""

    def __init__(self, cfg: DataConfig, context: int, seed: int):
        if cfg.format != "bytes":
            raise ValueError(
                f"ByteCorpus reads data.format bytes, not {cfg.format}: use models.data.corpus.open_corpus"
            )
        files = list_files(cfg)
        parts, total = [], 0
        for path in files:
            if cfg.max_bytes is not None and total >= cfg.max_bytes:
                break
            parts.append(read_prefix(path, (cfg.max_bytes - total) if cfg.max_bytes else None))
            total += len(parts[-1])
        if len(parts) == 1:  # a single file: its last 1/val_every is validation
            cut = len(parts[0]) - len(parts[0]) // cfg.val_every
            parts = [parts[0][:cut], parts[0][cut:]]
        # every val_every-th file is validation, and the last one when there are fewer files than that
        is_val = [
            i % cfg.val_every == cfg.val_every - 1 or (i == len(parts) - 1 < cfg.val_every) for i in range(len(parts))
        ]
        train = b"".join(p for p, v in zip(parts, is_val) if not v)
        val = b"".join(p for p, v in zip(parts, is_val) if v)
        if len(train) < context + 1 or len(val) < context + 1:
            raise CorpusError(f"corpus too small for context {context}: {len(train)} train and {len(val)} val bytes")
        train_bytes, val_bytes = (torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in (train, val))
        super().__init__(context, seed, train_bytes, val_bytes)
        # where each validation file ends in the val stream: a test split's document boundaries (bench/equal/study.py)
        self.val_ends = list(accumulate(len(p) for p, v in zip(parts, is_val) if v))

    def digest(self) -> str:
        """sha256 of the exact train and validation bytes: what the registry records as the data's identity."""
        h = hashlib.sha256(self.train.numpy())
        h.update(self.val.numpy())
        return h.hexdigest()

    def _rows(self, stream: torch.Tensor, starts: list[int]) -> torch.Tensor:
        return torch.stack([stream[s : s + self.context + 1] for s in starts]).long()  # (B, T+1)
