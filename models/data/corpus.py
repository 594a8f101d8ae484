"""One door to a corpus: raw bytes, documents tokenized once into cached token shards, or a weighted mixture.

    corpus = open_corpus(cfg, context, seed)                                  # data.format bytes: ByteCorpus
    corpus = open_corpus(cfg, context, seed, vocabulary, cache_dir)           # text | jsonl | parquet: TokenCorpus
    corpus = open_corpus(cfg, context, seed, ..., origin=Origin(...))         # data.sources: MixtureCorpus

All three are a :class:`Corpus`: what the training loop, the checkpoints and the registry read. Only
``corpus.cursors(cursor)`` tells them apart: a mixture's per-source cursors, None for a single source.

For a document format the shards live in ``cache_dir/<format>-<key>/``, ``key`` naming the data
config and the tokenizer's sha256: a rerun or a resumed stage finds them and tokenizes nothing. A
directory without a manifest, or whose shards or sources no longer match it, is rebuilt, never
used. A build writes into a private temporary directory (shards, then the manifest, atomically) and
renames it into place, so a crash leaves no half corpus and concurrent builders end with one.

Same inputs, same bytes: documents are read in a fixed order, tokenized by one tokenizer, written in
order; nothing in a shard or the manifest depends on time, the machine or the process.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from models.data.bytes import ByteCorpus, CorpusError, DataConfig
from models.data.documents import Document, read_documents, source_digest, source_files, source_root, split_documents
from models.data.encode import Encoder
from models.data.mixture import MixtureCorpus, Origin
from models.data.shards import (
    LAYOUT,
    Manifest,
    ShardWriter,
    SourceFile,
    Split,
    StaleShards,
    TokenCorpus,
    read_manifest,
    token_dtype,
    write_manifest,
)
from models.data.tokenizer import Vocabulary

log = logging.getLogger(__name__)

SHARD_TOKENS = 1 << 26  # 64 Mi tokens: 128 MB files in uint16
_BATCH_BYTES = 1 << 20  # text handed to the tokenizer at once (it encodes a batch on all its threads)


class Corpus(Protocol):
    """A stage's training and validation stream (ByteCorpus, TokenCorpus, MixtureCorpus)."""

    context: int  # tokens per sequence (each row of a batch has context + 1 for the shifted targets)
    vocab_size: int
    bytes_per_token: float  # text bytes per validation token: nats per byte = loss / bytes_per_token

    def batch(self, cursor: int, batch_size: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The global batch at ``cursor`` (sequences consumed so far); rank ``rank``'s contiguous 1/world."""
        ...

    def val_batches(self, n_batches: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]: ...

    def digest(self) -> str:
        """sha256 naming the exact data: what the registry records as the corpus's identity."""
        ...

    def cursors(self, cursor: int) -> dict[str, int] | None:
        """Every source's own cursor at global ``cursor``; None for a single source (its cursor is the global one)."""
        ...


def open_corpus(
    cfg: DataConfig,
    context: int,
    seed: int,
    vocabulary: Vocabulary | None = None,
    cache_dir: Path | str | None = None,
    *,
    progress: bool = True,
    shard_tokens: int = SHARD_TOKENS,
    origin: Origin | None = None,
) -> Corpus:
    """The corpus ``cfg`` describes, cut into sequences of ``context + 1`` and ordered by ``seed``.

    ``vocabulary`` (the tokenizer with its sha256) and ``cache_dir`` (where token shards are kept) are
    needed for the document formats; ``bytes`` reads raw bytes and takes no vocabulary but the byte one.
    ``data.sources``: each source opened so, mixed by weight from ``origin`` (where the stage's parent
    left every source; models/data/mixture.py).
    """
    if cfg.sources:
        corpora = {}
        for s in cfg.sources:
            try:
                corpora[s.name] = open_corpus(
                    s.corpus(cfg.num_proc), context, seed, vocabulary, cache_dir, progress=progress
                )
            except (CorpusError, FileNotFoundError) as e:
                raise type(e)(f"data source {s.name!r}: {e}") from None
        return MixtureCorpus(corpora, {s.name: s.weight for s in cfg.sources}, origin or Origin())
    if cfg.format == "bytes":
        if vocabulary is not None and not vocabulary.is_bytes:
            raise ValueError("data.format bytes reads raw bytes: it takes no tokenizer (use text, jsonl or parquet)")
        return ByteCorpus(cfg, context, seed)
    if vocabulary is None or cache_dir is None:
        raise ValueError(f"data.format {cfg.format} needs a tokenizer (a Vocabulary) and a cache directory")
    tok, sha = vocabulary.tokenizer, vocabulary.sha256
    directory, manifest = ensure_shards(cfg, tok, sha, Path(cache_dir), progress, shard_tokens, cfg.num_proc)
    return TokenCorpus(directory, manifest, context, seed)


def check_documents(cfg: DataConfig, cache_dir: Path) -> None:
    """Read every document of ``cfg`` once, without tokenizing: a file that does not parse, a missing field or
    column, a corpus with no train or no validation document is the one-line CorpusError it would be later."""
    files = source_files(cfg)
    n = Counter(
        is_val for is_val, _ in split_documents(read_documents(cfg, cache_dir / "hf-datasets", files), cfg.val_every)
    )
    _check_splits(cfg, source_root(cfg), n[False], n[True])


def _check_splits(cfg: DataConfig, root: Path, n_train: int, n_val: int) -> None:
    if n_train + n_val == 0:
        raise CorpusError(f"data source {str(root)!r}: no {cfg.format} documents left after dropping empty ones")
    if not n_train or not n_val:
        n = n_train + n_val
        raise CorpusError(f"data source {str(root)!r}: {n} document(s); a train and a validation split need 2 or more")


def shards_dir(cfg: DataConfig, tokenizer_sha256: str, cache_dir: Path) -> Path:
    key = hashlib.sha256(f"{LAYOUT}|{cfg.model_dump_json()}|{tokenizer_sha256}".encode()).hexdigest()[:20]
    return Path(cache_dir) / f"{cfg.format}-{key}"


def ensure_shards(
    cfg: DataConfig,
    tokenizer,
    tokenizer_sha256: str,
    cache_dir: Path,
    progress: bool = True,
    shard_tokens: int = SHARD_TOKENS,
    num_proc: int = 1,
) -> tuple[Path, Manifest]:
    """The directory and manifest of the verified token shards for (cfg, tokenizer): found, or built now."""
    directory = shards_dir(cfg, tokenizer_sha256, cache_dir)
    files = source_files(cfg)
    listed = sources(cfg, files)
    try:
        return directory, read_manifest(directory, cfg, tokenizer_sha256, listed)
    except StaleShards as why:
        if directory.exists():
            log.warning("rebuilding token shards: %s", why)
    directory.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        hf_cache = cache_dir / "hf-datasets"
        manifest = build_shards(
            cfg, tokenizer, tokenizer_sha256, build, hf_cache, progress, shard_tokens, files, num_proc
        )
        shutil.rmtree(directory, ignore_errors=True)  # the stale one, if any
        try:
            build.rename(directory)
        except OSError:  # another process renamed its (identical) build into place first
            manifest = read_manifest(directory, cfg, tokenizer_sha256, listed)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return directory, manifest


def sources(cfg: DataConfig, files: list[Path]) -> list[SourceFile]:
    """The source files as the manifest records them: path (relative to the source root) and size."""
    root = source_root(cfg)
    return [SourceFile(path=p.relative_to(root).as_posix(), size=p.stat().st_size) for p in files]


def build_shards(
    cfg: DataConfig,
    tokenizer,
    tokenizer_sha256: str,
    directory: Path,
    hf_cache: Path,
    progress: bool = True,
    shard_tokens: int = SHARD_TOKENS,
    files: list[Path] | None = None,
    num_proc: int = 1,
) -> Manifest:
    """Read, split and tokenize every document of ``cfg`` into shards in ``directory``; the manifest last.
    ``files``: ``source_files(cfg)``, when the caller has listed them already. ``num_proc``: encoding
    processes (models/data/encode.py); the shards are the same for any."""
    files, root = files or source_files(cfg), source_root(cfg)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    eos_id = None
    if cfg.eos_token is not None:
        eos_id = tokenizer.token_to_id(cfg.eos_token)
        if eos_id is None:
            raise CorpusError(f"data.eos_token {cfg.eos_token!r} is not in the tokenizer's vocabulary")
    writers = {split: ShardWriter(directory, split, dtype, shard_tokens) for split in ("train", "val")}
    counts = {split: Counter() for split in writers}  # documents, tokens, text_bytes
    size = sum(p.stat().st_size for p in files)
    by_text = cfg.max_bytes is not None and cfg.max_bytes < size  # a capped run: the bar counts text up to the cap
    bar = tqdm(
        total=cfg.max_bytes if by_text else size,
        unit="B",
        unit_scale=True,
        desc=f"tokenizing {cfg.format}",
        disable=not progress,
    )

    def batches() -> Iterator[tuple[list[tuple[bool, Document]], list[str]]]:
        batch, batch_bytes = [], 0
        for item in split_documents(read_documents(cfg, hf_cache, files), cfg.val_every):
            batch.append(item)
            batch_bytes += item[1].n_bytes
            if batch_bytes >= _BATCH_BYTES:
                yield batch, [doc.text for _, doc in batch]
                batch, batch_bytes = [], 0
        if batch:
            yield batch, [doc.text for _, doc in batch]

    with bar, Encoder(tokenizer, num_proc) as encoder:
        for batch, encoded in encoder.map(batches()):
            for (is_val, doc), ids in zip(batch, encoded):
                ids = np.asarray(ids + ([eos_id] if eos_id is not None else []), dtype=dtype)
                split = "val" if is_val else "train"
                writers[split].add(ids)
                counts[split].update(documents=1, tokens=len(ids), text_bytes=doc.n_bytes)
                bar.update(doc.n_bytes if by_text else doc.source_bytes)
    _check_splits(cfg, root, counts["train"]["documents"], counts["val"]["documents"])
    splits = {split: Split(shards=writers[split].close(), **counts[split]) for split in writers}
    manifest = Manifest(
        layout=LAYOUT,
        data=cfg,
        sources=sources(cfg, files),
        source_digest=source_digest(files, root),
        tokenizer_sha256=tokenizer_sha256,
        vocab_size=vocab_size,
        dtype=dtype,
        eos_id=eos_id,
        **splits,
    )
    write_manifest(directory, manifest)
    return manifest
