"""Token corpora: text | jsonl | parquet read with datasets, tokenized once into cached, verified shards."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from repo import REPO_ROOT

from models.data.bytes import ByteCorpus, DataConfig
from models.data.corpus import open_corpus, shards_dir
from models.data.shards import MANIFEST, token_dtype
from models.data.tokenizer import Vocabulary
from tests.corpus_helpers import (
    byte_bpe,
    stdlib_documents,
    tokenizer_sha256,
    write_jsonl,
    write_parquet,
    write_text_files,
)

EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def docs():
    return stdlib_documents(12)


@pytest.fixture(scope="module")
def tok(docs):
    return byte_bpe(docs)


def jsonl_cfg(source: Path, **kw) -> DataConfig:
    return DataConfig(format="jsonl", source=str(source), glob="*.jsonl", **kw)


def open_tokens(cfg, tok, cache, context=16, seed=0, **kw):
    return open_corpus(cfg, context, seed, Vocabulary(tok, tokenizer_sha256(tok)), cache, progress=False, **kw)


def split_tokens(corpus, split: str) -> list[int]:
    stream = getattr(corpus, split)
    return stream.rows([0], len(stream))[0].tolist()


def test_every_format_reads_the_same_documents_into_the_same_tokens(tmp_path, docs, tok):
    configs = {
        "jsonl": jsonl_cfg(write_jsonl(tmp_path / "j" / "a.jsonl", docs).parent, val_every=4),
        "parquet": DataConfig(format="parquet", source=str(write_parquet(tmp_path / "p.parquet", docs)), val_every=4),
        "text": DataConfig(
            format="text", source=str(write_text_files(tmp_path / "t", docs)), glob="*.txt", val_every=4
        ),
    }
    corpora = {name: open_tokens(cfg, tok, tmp_path / "cache") for name, cfg in configs.items()}
    assert len({c.digest() for c in corpora.values()}) == 1
    # every 4th document is validation, in order; without a separator the streams are the texts concatenated
    c = corpora["jsonl"]
    assert tok.decode(split_tokens(c, "val")) == "".join(docs[3::4])
    assert tok.decode(split_tokens(c, "train")) == "".join(d for i, d in enumerate(docs) if i % 4 != 3)
    assert (c.manifest.train.documents, c.manifest.val.documents) == (9, 3)
    assert c.manifest.train.text_bytes == sum(len(d.encode()) for i, d in enumerate(docs) if i % 4 != 3)
    assert c.bytes_per_token == sum(len(d.encode()) for d in docs[3::4]) / len(split_tokens(c, "val")) > 1


def test_documents_end_with_the_eos_token(tmp_path, docs, tok):
    c = open_tokens(jsonl_cfg(write_jsonl(tmp_path / "a.jsonl", docs).parent, eos_token=EOS), tok, tmp_path / "c")
    eos = tok.token_to_id(EOS)
    train = split_tokens(c, "train")
    assert c.manifest.eos_id == eos and train.count(eos) == c.manifest.train.documents == 11 and train[-1] == eos
    assert tok.decode(train[: train.index(eos)]) == docs[0]


def test_batches_follow_the_byte_corpus_cursor(tmp_path, docs, tok):
    c = open_tokens(jsonl_cfg(write_jsonl(tmp_path / "a.jsonl", docs).parent), tok, tmp_path / "c")
    again = open_tokens(jsonl_cfg(tmp_path), tok, tmp_path / "c")
    x, y = c.batch(0, 8)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for cursor in (0, 7, c.n_train - 3):  # the last one crosses into the second epoch
        assert torch.equal(c.batch(cursor, 8)[0], again.batch(cursor, 8)[0])
    assert not torch.equal(
        c.batch(0, 8)[0], open_tokens(jsonl_cfg(tmp_path), tok, tmp_path / "c", seed=1).batch(0, 8)[0]
    )
    # two stages continue one stream; one epoch reads every non-overlapping chunk once
    one_run = torch.cat([c.batch(k, 4)[0] for k in range(0, 40, 4)])
    assert torch.equal(one_run, torch.cat([c.batch(k, 4)[0] for k in range(0, 20, 4)] + [c.batch(20, 20)[0]]))
    chunks = torch.tensor(split_tokens(c, "train")[: c.n_train * 17]).view(c.n_train, 17)[:, :-1]
    assert sorted(map(tuple, c.batch(0, c.n_train)[0].tolist())) == sorted(map(tuple, chunks.tolist()))
    # data parallel: the ranks' slices, in order, are the global batch
    ranks = [c.batch(12, 8, rank=r, world=4) for r in range(4)]
    assert torch.equal(torch.cat([x for x, _ in ranks]), c.batch(12, 8)[0])
    vals = c.val_batches(3, 4)
    assert len(vals) == 3 and all(torch.equal(a[0], b[0]) for a, b in zip(vals, c.val_batches(3, 4)))


def test_rows_spanning_shards_read_as_one_stream(tmp_path, docs, tok):
    cfg = jsonl_cfg(write_jsonl(tmp_path / "a.jsonl", docs).parent)
    whole = open_tokens(cfg, tok, tmp_path / "one")
    sharded = open_tokens(cfg, tok, tmp_path / "many", shard_tokens=1000)
    assert len(whole.manifest.train.shards) == 1 and len(sharded.manifest.train.shards) > 5
    assert sharded.manifest.train.tokens == whole.manifest.train.tokens
    assert torch.equal(whole.batch(0, whole.n_train)[0], sharded.batch(0, whole.n_train)[0])
    assert all(torch.equal(a[0], b[0]) for a, b in zip(whole.val_batches(4, 8), sharded.val_batches(4, 8)))


def test_the_same_inputs_give_the_same_bytes(tmp_path, docs, tok):
    cfg = jsonl_cfg(write_jsonl(tmp_path / "a.jsonl", docs).parent)
    a, b = (shards_dir(cfg, tokenizer_sha256(tok), tmp_path / n) for n in ("a", "b"))
    open_tokens(cfg, tok, tmp_path / "a"), open_tokens(cfg, tok, tmp_path / "b")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and MANIFEST in names and "train-00000.bin" in names
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


class NoTokenizing:
    """A tokenizer stand-in that fails if anything asks it to tokenize."""

    def __getattr__(self, name):
        raise AssertionError(f"tokenizer.{name} called: the cached shards should have been used")


def test_a_rerun_uses_the_cache_and_tokenizes_nothing(tmp_path, docs, tok):
    cfg = jsonl_cfg(write_jsonl(tmp_path / "a.jsonl", docs).parent)
    first = open_tokens(cfg, tok, tmp_path / "c")
    shard = first.directory / "train-00000.bin"
    stamp = shard.stat().st_mtime_ns
    again = open_corpus(cfg, 16, 0, Vocabulary(NoTokenizing(), tokenizer_sha256(tok)), tmp_path / "c", progress=False)
    assert again.digest() == first.digest() and shard.stat().st_mtime_ns == stamp
    # another tokenizer or another data config is another cache directory
    other = byte_bpe(docs, vocab_size=300)
    assert open_tokens(cfg, other, tmp_path / "c").directory != first.directory
    assert open_tokens(jsonl_cfg(tmp_path, val_every=3), tok, tmp_path / "c").directory != first.directory


@pytest.mark.parametrize("damage", ["no manifest", "garbage manifest", "flipped byte", "truncated shard", "source"])
def test_a_partial_or_corrupt_cache_is_rebuilt_never_used(tmp_path, docs, tok, damage):
    source = write_jsonl(tmp_path / "src" / "a.jsonl", docs)
    cfg = jsonl_cfg(source.parent)
    good = open_tokens(cfg, tok, tmp_path / "c")
    directory, shard = good.directory, good.directory / "train-00000.bin"
    if damage == "no manifest":
        (directory / MANIFEST).unlink()
    elif damage == "garbage manifest":
        (directory / MANIFEST).write_text('{"layout": 1, "data": ')
    elif damage == "flipped byte":
        data = bytearray(shard.read_bytes())
        data[100] ^= 1
        shard.write_bytes(bytes(data))
    elif damage == "truncated shard":
        shard.write_bytes(shard.read_bytes()[:-2])
    else:  # the source grew: the old shards are stale
        write_jsonl(source, docs + docs[:1])
    with pytest.raises(AssertionError, match="should have been used"):  # the damaged cache is not used
        open_corpus(cfg, 16, 0, Vocabulary(NoTokenizing(), tokenizer_sha256(tok)), tmp_path / "c", progress=False)
    rebuilt = open_tokens(cfg, tok, tmp_path / "c")
    assert rebuilt.directory == directory
    assert (rebuilt.digest() == good.digest()) == (damage != "source")
    assert [p.name for p in (tmp_path / "c").iterdir() if p.name.startswith(".")] == []  # no build left behind


def test_max_bytes_caps_the_text_read(tmp_path, docs, tok):
    cfg = jsonl_cfg(write_jsonl(tmp_path / "a.jsonl", docs).parent, max_bytes=20_000, val_every=2)
    m = open_tokens(cfg, tok, tmp_path / "c").manifest
    assert m.train.text_bytes + m.val.text_bytes == 20_000
    assert m.train.documents + m.val.documents < len(docs)


def test_a_vocabulary_over_65536_is_stored_as_uint32(tmp_path, docs):
    assert token_dtype(256) == token_dtype(65536) == "uint16" and token_dtype(65537) == "uint32"
    big = byte_bpe(docs)
    big.add_tokens([f"<extra{i}>" for i in range(70_000)])
    assert big.get_vocab_size() > 70_000
    texts = [d + f"<extra{69_000 + i}>" for i, d in enumerate(docs)]
    c = open_tokens(jsonl_cfg(write_jsonl(tmp_path / "a.jsonl", texts).parent), big, tmp_path / "c")
    assert c.manifest.dtype == "uint32"
    train = split_tokens(c, "train")
    assert big.token_to_id("<extra69000>") in train and max(train) > 65535
    assert np.fromfile(c.directory / "train-00000.bin", dtype="<u4").tolist() == train


def test_bytes_format_is_the_byte_corpus(tmp_path, tok):
    cfg = DataConfig(max_bytes=100_000)
    a, b = open_corpus(cfg, 32, 0), ByteCorpus(cfg, 32, 0)
    assert isinstance(a, ByteCorpus) and a.digest() == b.digest() and torch.equal(a.batch(5, 4)[0], b.batch(5, 4)[0])
    with pytest.raises(ValueError, match="takes no tokenizer"):
        open_corpus(cfg, 32, 0, Vocabulary(tok, tokenizer_sha256(tok)), tmp_path)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        open_corpus(DataConfig(format="text"), 32, 0)
    with pytest.raises(ValueError, match="open_corpus"):
        ByteCorpus(DataConfig(format="text"), 32, 0)


def test_tokenizing_shows_a_progress_bar(tmp_path, docs, tok, capfd):
    cfg = jsonl_cfg(write_jsonl(tmp_path / "a.jsonl", docs).parent)
    open_corpus(cfg, 16, 0, Vocabulary(tok, tokenizer_sha256(tok)), tmp_path / "c")
    err = capfd.readouterr().err
    assert "tokenizing jsonl" in err and "100%" in err


def test_the_datasets_cache_stays_in_the_cache_dir(tmp_path, docs):
    """In a fresh process with HOME elsewhere: nothing lands under ~/.cache, datasets' files under cache_dir."""
    write_jsonl(tmp_path / "src" / "a.jsonl", docs)
    script = (
        "import sys; from pathlib import Path; from models.data.corpus import open_corpus;"
        "from models.data.bytes import DataConfig; from models.data.tokenizer import Vocabulary;"
        "from tests.corpus_helpers import byte_bpe, stdlib_documents, tokenizer_sha256;"
        "tok = byte_bpe(stdlib_documents(12)); src, cache = map(Path, sys.argv[1:]);"
        "c = open_corpus(DataConfig(format='jsonl', source=str(src), glob='*.jsonl'), 16, 0, Vocabulary(tok,"
        " tokenizer_sha256(tok)), cache, progress=False); print(c.n_train)"
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_"))}
    env.update(HOME=str(home), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "src"), str(tmp_path / "cache")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) > 0
    assert list(home.iterdir()) == []
    assert any((tmp_path / "cache" / "hf-datasets").iterdir())


def test_two_encoding_processes_write_the_same_shards_and_the_same_cache_key(tmp_path, docs, tok, monkeypatch):
    import models.data.corpus

    monkeypatch.setattr(models.data.corpus, "_BATCH_BYTES", 2000)  # several batches in flight, out of order if it could
    source = write_jsonl(tmp_path / "j" / "a.jsonl", docs).parent
    one = open_tokens(jsonl_cfg(source), tok, tmp_path / "c1")
    two = open_tokens(jsonl_cfg(source, num_proc=2), tok, tmp_path / "c2")
    built = (one.directory / MANIFEST).stat().st_mtime_ns
    assert one.digest() == two.digest() and one.directory.name == two.directory.name
    again = open_tokens(jsonl_cfg(source, num_proc=2), tok, tmp_path / "c1")  # found in the cache, not rebuilt
    assert again.directory == one.directory and (one.directory / MANIFEST).stat().st_mtime_ns == built
