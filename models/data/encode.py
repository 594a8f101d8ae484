"""Batch encoding on several processes, in order, with bounded memory: how token shards scale with cores.

    with Encoder(tokenizer, num_proc=2) as enc:
        for tag, ids in enc.map(batches):  # batches: (tag, texts) pairs; ids: each text's token ids
            ...

``num_proc`` 1 encodes in this process (``encode_batch_fast``, the tokenizers library's own threads).
More: a pool of spawned processes, each holding the tokenizer, encodes whole batches; results come back
in the input's order (same shards, byte for byte, whatever ``num_proc``), and at most ``2 * num_proc``
batches are in flight, so a corpus larger than memory streams through. (``datasets.map(num_proc=)``
needs a materialized Arrow dataset, which a streaming read does not make.)
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor

from tokenizers import Tokenizer

_WORKER: Tokenizer | None = None


def _init(serialized: str) -> None:
    global _WORKER
    _WORKER = Tokenizer.from_str(serialized)


def _encode(texts: list[str]) -> list[list[int]]:
    return [e.ids for e in _WORKER.encode_batch_fast(texts, add_special_tokens=False)]


class Encoder:
    def __init__(self, tokenizer: Tokenizer, num_proc: int = 1):
        self.tokenizer, self.num_proc, self.pool = tokenizer, num_proc, None

    def __enter__(self) -> Encoder:
        if self.num_proc > 1:
            ctx = multiprocessing.get_context("spawn")  # no fork of a threaded process (Prefect, tokenizers)
            # a worker that dies raises BrokenProcessPool here, where multiprocessing.Pool would wait forever
            self.pool = ProcessPoolExecutor(
                self.num_proc, mp_context=ctx, initializer=_init, initargs=(self.tokenizer.to_str(),)
            )
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def map(self, batches: Iterable[tuple[object, list[str]]]) -> Iterator[tuple[object, list[list[int]]]]:
        if self.pool is None:
            for tag, texts in batches:
                yield tag, [e.ids for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
            return
        pending: deque = deque()
        for tag, texts in batches:
            pending.append((tag, self.pool.submit(_encode, texts)))
            if len(pending) >= 2 * self.num_proc:
                tag, result = pending.popleft()
                yield tag, result.result()
        while pending:
            tag, result = pending.popleft()
            yield tag, result.result()
