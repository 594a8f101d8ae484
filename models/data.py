"""A deterministic byte-level corpus with a resumable cursor.

The default corpus is the running interpreter's own standard library (``*.py`` files), which
is on every machine that can run this code, so nothing is downloaded. Files are sorted and
split into train and validation *by file*, so no validation text leaks into training.

Training batches are drawn through a cursor: the number of sequences consumed so far. The
stream of sequences is a fixed, seeded permutation of the non-overlapping train chunks, one
permutation per epoch, so ``batch(cursor, B)`` is a pure function of (corpus, seed, cursor).
A stage that starts at the previous stage's end cursor continues the stream: no sequence is
replayed within an epoch.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str | None = None  # a text file or a directory; None = this interpreter's stdlib
    glob: str = "**/*.py"  # files taken from a directory source
    val_every: int = Field(20, ge=2)  # every 20th file (5%) is validation
    max_bytes: int | None = Field(None, ge=1)  # cap on corpus bytes read, for quick runs


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def list_files(cfg: DataConfig) -> list[Path]:
    root = Path(cfg.source) if cfg.source else stdlib_dir()
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"data source {str(root)!r} is neither a file nor a directory")
    files = sorted(p for p in root.glob(cfg.glob) if p.is_file() and "site-packages" not in p.parts)
    if not files:
        raise FileNotFoundError(f"data source {str(root)!r} has no files matching {cfg.glob!r}")
    return files


class ByteCorpus:
    """Train and validation byte streams, chunked into sequences of ``context + 1`` bytes."""

    def __init__(self, cfg: DataConfig, context: int, seed: int):
        self.context, self.seed = context, seed
        files = list_files(cfg)
        parts, total = [], 0
        for path in files:
            if cfg.max_bytes is not None and total >= cfg.max_bytes:
                break
            parts.append(path.read_bytes()[: (cfg.max_bytes - total) if cfg.max_bytes else None])
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
            raise ValueError(f"corpus too small for context {context}: {len(train)} train and {len(val)} val bytes")
        self.train = torch.frombuffer(bytearray(train), dtype=torch.uint8)
        self.val = torch.frombuffer(bytearray(val), dtype=torch.uint8)
        self.n_train = len(self.train) // (context + 1)
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def digest(self) -> str:
        """sha256 of the exact train and validation bytes: what the registry records as the data's identity."""
        h = hashlib.sha256(self.train.numpy())
        h.update(self.val.numpy())
        return h.hexdigest()

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n_train, generator=gen), epoch
        return self._perm

    def _chunks(self, stream: torch.Tensor, starts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        seq = torch.stack([stream[s : s + self.context + 1] for s in starts]).long()  # (B, T+1)
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
