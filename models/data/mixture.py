"""A weighted mixture of corpora, each with its own cursor: ``data.sources``.

    mix = MixtureCorpus({"code": c1, "prose": c2}, {"code": 0.7, "prose": 0.3},
                        origin=Origin(cursor=parent_cursor, cursors=parent_cursors))
    x, y = mix.batch(cursor, 32)             # rows from each source, in the exact shares
    mix.cursors(cursor)                      # {"code": ..., "prose": ...}: every source's own position

The training loop keeps one global cursor (sequences consumed by every stage so far); the mixture turns
it into one cursor per source. A stage starts at its parent's cursors (``Origin``) and draws every
sequence from the source whose share lags its weight the most (ties: the first source), so after *n*
sequences of the stage source *s* has given ``n * w_s`` of them to within one sequence: exactly its
weight, at every batch (and every row: batch boundaries do not change the allocation). Deterministic:
which source feeds which row is a function of the weights and the position in the stage alone; each
source's rows come from its own seeded stream (models/data/bytes.py), from its cursor on, so a stage never
replays a source's sequence within its epoch and a later stage continues it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Origin:
    """Where a stage's mixture starts: the global cursor and every source's (a new source starts at 0)."""

    cursor: int = 0
    cursors: dict[str, int] = field(default_factory=dict)


def allocate(weights: list[float], done: list[int], n: int) -> list[int]:
    """The source of each of the next ``n`` sequences, given ``done`` sequences per source so far: each goes
    to the source furthest below its share ``w_s * (sequences so far + 1)`` (ties: the lowest index)."""
    total = sum(weights)
    shares = [w / total for w in weights]
    done, order = list(done), []
    seen = sum(done)
    for _ in range(n):
        seen += 1
        lag = [seen * w - d for w, d in zip(shares, done)]
        s = max(range(len(lag)), key=lambda i: (lag[i], -i))
        done[s] += 1
        order.append(s)
    return order


class MixtureCorpus:
    """Sources (name -> ByteCorpus | TokenCorpus of one context) behind the one-corpus interface."""

    def __init__(self, corpora: dict, weights: dict[str, float], origin: Origin = Origin()):
        self.names = list(corpora)
        self.corpora = [corpora[n] for n in self.names]
        self.weights = [float(weights[n]) for n in self.names]
        self.origin = origin
        contexts = {c.context for c in self.corpora}
        if len(contexts) != 1:
            raise ValueError(f"data.sources: corpora of different contexts {sorted(contexts)}")
        self.context = contexts.pop()
        self.vocab_size = max(c.vocab_size for c in self.corpora)
        total = sum(self.weights)
        self.bytes_per_token = sum(w / total * c.bytes_per_token for w, c in zip(self.weights, self.corpora))
        self._n, self._done = 0, [0] * len(self.names)  # sequences of this stage allocated so far, per source

    # ---- where each source is ----------------------------------------------------------------

    def _counts_at(self, cursor: int) -> list[int]:
        """Sequences each source has given in this stage up to global ``cursor`` (cached going forward)."""
        n = cursor - self.origin.cursor
        if n < 0:
            raise ValueError(f"cursor {cursor} is before the stage's start {self.origin.cursor}")
        if n < self._n:
            self._n, self._done = 0, [0] * len(self.names)
        for s in allocate(self.weights, self._done, n - self._n):
            self._done[s] += 1
        self._n = n
        return list(self._done)

    def counts(self, cursor: int) -> dict[str, int]:
        """Sequences each source has given in this stage, up to ``cursor``."""
        return dict(zip(self.names, self._counts_at(cursor)))

    def cursors(self, cursor: int) -> dict[str, int]:
        """Every source's own cursor at global ``cursor`` (sources not in this mixture: as the origin has them)."""
        here = {n: self.origin.cursors.get(n, 0) + c for n, c in self.counts(cursor).items()}
        return {**self.origin.cursors, **here}

    # ---- the one-corpus interface ------------------------------------------------------------

    def batch(self, cursor: int, batch_size: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The global batch at ``cursor`` (its rows in allocation order); rank ``rank``'s contiguous 1/world."""
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by {world} processes")
        done = self._counts_at(cursor)
        order = allocate(self.weights, done, batch_size)
        x = torch.empty(batch_size, self.context, dtype=torch.long)
        y = torch.empty_like(x)
        for s, corpus in enumerate(self.corpora):
            rows = [i for i, o in enumerate(order) if o == s]
            if rows:
                start = self.origin.cursors.get(self.names[s], 0) + done[s]
                x[rows], y[rows] = corpus.batch(start, len(rows))
        local = batch_size // world
        return x[rank * local : (rank + 1) * local], y[rank * local : (rank + 1) * local]

    def val_batches(self, n_batches: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed validation batches in the mixture's shares: the first rows of each source's own fixed set."""
        per_source = [c.val_batches(n_batches, batch_size) for c in self.corpora]
        order = allocate(self.weights, [0] * len(self.corpora), batch_size)
        out = []
        for b in range(n_batches):
            taken = [0] * len(self.corpora)
            xs, ys = [], []
            for s in order:
                x, y = per_source[s][b]
                xs.append(x[taken[s]])
                ys.append(y[taken[s]])
                taken[s] += 1
            out.append((torch.stack(xs), torch.stack(ys)))
        return out

    def source_val_batches(self, n_batches: int, batch_size: int) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Each source's own fixed validation batches: per-source validation loss."""
        return {n: c.val_batches(n_batches, batch_size) for n, c in zip(self.names, self.corpora)}

    def digest(self) -> str:
        """sha256 over the sources' names, weights and data digests."""
        h = hashlib.sha256()
        for n, w, c in zip(self.names, self.weights, self.corpora):
            h.update(f"{n}\0{w!r}\0{c.digest()}\n".encode())
        return h.hexdigest()


@dataclass(frozen=True)
class MixtureReport:
    """What a stage did with its mixture: weights asked, shares given, cursors after, loss per source."""

    weights: dict[str, float]
    shares: dict[str, float]  # measured: sequences each source gave / sequences of the stage
    cursors: dict[str, int]  # every source's cursor after the stage (the next stage starts there)
    val_loss: dict[str, float]  # each source's own fixed validation batches


def report(
    mix: MixtureCorpus, model, cursor: int, n_batches: int, batch_size: int, evaluate: Callable
) -> MixtureReport:
    """The stage's mixture after training ``model`` up to global ``cursor``; ``evaluate(model, batches)`` is the
    training loop's held-out loss (models/train/loop.py: data does not import training)."""
    counts = mix.counts(cursor)
    total = max(sum(counts.values()), 1)
    batches = mix.source_val_batches(n_batches, batch_size)
    return MixtureReport(
        weights=dict(zip(mix.names, mix.weights)),
        shares={n: c / total for n, c in counts.items()},
        cursors=mix.cursors(cursor),
        val_loss={n: evaluate(model, b) for n, b in batches.items()},
    )
