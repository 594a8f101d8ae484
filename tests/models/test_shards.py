"""The shard loader's memory, and the document split, without a tokenizer in the way."""

import gc
from pathlib import Path

import numpy as np
import pytest

from models.data.bytes import DataConfig
from models.data.documents import Document, split_documents
from models.data.shards import LAYOUT, Manifest, ShardWriter, Split, TokenCorpus, write_manifest


def rss_anon_bytes() -> int:
    """This process's anonymous resident memory: what it allocated, not the page cache its maps show."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def write_random_corpus(directory: Path, train_tokens: int, val_tokens: int, shard_tokens: int) -> Manifest:
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", train_tokens), ("val", val_tokens)):
        writer = ShardWriter(directory, split, "uint16", shard_tokens)
        for start in range(0, n, 1 << 20):
            writer.add(rng.integers(0, 1 << 16, min(1 << 20, n - start), dtype=np.uint16))
        splits[split] = Split(documents=1, tokens=n, text_bytes=n, shards=writer.close())
    manifest = Manifest(
        layout=LAYOUT,
        data=DataConfig(format="text"),
        sources=[],
        source_digest="",
        tokenizer_sha256="",
        vocab_size=1 << 16,
        dtype="uint16",
        eos_id=None,
        **splits,
    )
    write_manifest(directory, manifest)
    return manifest


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc/self/status")
def test_memory_stays_bounded_over_a_corpus_six_times_the_cap(tmp_path):
    cap = 16 << 20  # bytes of anonymous memory the loader may add while reading the whole corpus
    train_tokens = 48 << 20  # 96 MB of uint16 train tokens: 6x the cap, in 12 shards
    manifest = write_random_corpus(tmp_path, train_tokens, 1 << 20, shard_tokens=4 << 20)
    assert sum((tmp_path / s.file).stat().st_size for s in manifest.train.shards) == 6 * cap
    corpus = TokenCorpus(tmp_path, manifest, context=256, seed=0)
    corpus.batch(0, 64)
    corpus.val_batches(8, 64)
    gc.collect()  # earlier tests' garbage freed now, not during the measurement
    baseline, peak, seen = rss_anon_bytes(), 0, 0
    for epoch_cursor in range(0, corpus.n_train, 64):  # one whole epoch: every train token read once
        x, _ = corpus.batch(epoch_cursor, 64)
        seen += len(x)
        if epoch_cursor % (64 * 64) == 0:
            peak = max(peak, rss_anon_bytes() - baseline)
    peak = max(peak, rss_anon_bytes() - baseline)
    assert seen >= corpus.n_train == train_tokens // 257
    print(f"loader: +{peak / 2**20:.1f} MiB anonymous memory over a {6 * cap / 2**20:.0f} MiB corpus")
    assert peak < cap, f"the loader grew by {peak / 2**20:.1f} MiB reading a {6 * cap / 2**20:.0f} MiB corpus"
    # the measure does see a corpus read whole into memory, as ByteCorpus reads its bytes
    before = rss_anon_bytes()
    whole = np.concatenate([np.fromfile(tmp_path / s.file, dtype=np.uint16) for s in manifest.train.shards])
    assert rss_anon_bytes() - before > 3 * cap and len(whole) == train_tokens  # (malloc may reuse freed memory)


def docs(n: int):
    return iter(Document(f"d{i}", 2, 2) for i in range(n))


@pytest.mark.parametrize(("n", "val_every", "val"), [(10, 5, [4, 9]), (12, 5, [4, 9]), (3, 20, [2]), (1, 2, [0])])
def test_every_nth_document_is_validation_and_the_last_when_fewer(n, val_every, val):
    split = list(split_documents(docs(n), val_every))
    assert [doc.text for _, doc in split] == [f"d{i}" for i in range(n)]
    assert [i for i, (is_val, _) in enumerate(split) if is_val] == val
