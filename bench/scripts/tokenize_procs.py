"""Tokenizing a corpus into token shards with 1 and with 2 encoding processes (``data.num_proc``).

    RAYON_NUM_THREADS=1 PYTHONPATH=. python bench/scripts/tokenize_procs.py [--max-bytes 8000000] [--vocab 4096]

``ensure_shards`` end to end (datasets' streaming read, split, batch encoding, shard writes, sha256s,
manifest) on the standard library's text (``format: text``, a document per file), into a fresh cache
directory each time, for ``num_proc`` 1 then 2, alternating, median of ``--repeats``. With
RAYON_NUM_THREADS=1 the tokenizers library encodes on one thread per process, so the ratio is what the
processes give; reading the documents stays in the main process. Also checks both builds are identical.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def byte_bpe(texts: list[str], vocab_size: int):
    """A byte-level BPE (as bench/scripts/data.py's), here so that the spawned encoders import no torch."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-bytes", type=int, default=8_000_000)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    # here, not at the top: each spawned encoder imports this file as its __main__, and should not import torch
    from models.data.bytes import DataConfig
    from models.data.corpus import ensure_shards
    from models.data.documents import read_documents

    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        work = Path(tmp)
        cfg = DataConfig(format="text", max_bytes=args.max_bytes, encoding_errors="replace")
        texts = [d.text for d in read_documents(cfg, work / "hf-datasets")]
        tok = byte_bpe(texts[: max(1, len(texts) // 8)], args.vocab)
        mb = sum(len(t.encode()) for t in texts) / 1e6
        times: dict[int, list[float]] = {1: [], 2: []}
        digests = set()
        for r in range(args.repeats):
            for n in (1, 2):
                start = time.perf_counter()
                _, manifest = ensure_shards(
                    cfg.model_copy(update={"num_proc": n}), tok, "bench", work / f"c{r}{n}", progress=False
                )
                times[n].append(time.perf_counter() - start)
                digests.add(tuple(s.sha256 for s in manifest.train.shards + manifest.val.shards))
        tokens = manifest.train.tokens + manifest.val.tokens
        print(
            f"{mb:.1f} MB of text, {len(texts)} documents, {tokens} tokens (vocab {args.vocab}); "
            f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset')}; identical shards: {len(digests) == 1}"
        )
        for n, ts in times.items():
            t = statistics.median(ts)
            print(f"num_proc {n}: {t:.2f} s median of {ts}: {tokens / t / 1e3:.0f}k tokens/s, {mb / t:.2f} MB/s")
        print(f"speed-up 2 vs 1: {statistics.median(times[1]) / statistics.median(times[2]):.2f}x")


if __name__ == "__main__":
    main()
