from pathlib import Path

import pytest
import torch

from models.data.bytes import ByteCorpus, DataConfig, list_files, stdlib_dir


@pytest.fixture(scope="module")
def corpus():
    return ByteCorpus(DataConfig(max_bytes=300_000), context=32, seed=0)


def test_default_source_is_the_sorted_stdlib():
    files = list_files(DataConfig())
    assert files == sorted(files)
    assert all(p.suffix == ".py" and stdlib_dir() in p.parents and "site-packages" not in p.parts for p in files)
    assert len(files) > 100


def test_listing_skips_site_packages_like_pathlib_glob(tmp_path):
    """The walk that never enters site-packages finds exactly what pathlib's glob and the filter found."""
    for rel in ["a.py", ".hidden.py", "b.txt", "d/c.py", "d/e/f.py", "site-packages/x.py", "d/site-packages/y.py"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    (tmp_path / "linked").symlink_to(tmp_path / "d", target_is_directory=True)  # not followed by either
    (tmp_path / "link.py").symlink_to(tmp_path / "a.py")
    (tmp_path / "broken.py").symlink_to(tmp_path / "missing.py")
    for root, pattern in [(tmp_path, "**/*.py"), (tmp_path / "d", "**/*.py"), (stdlib_dir(), "**/*.py")]:
        expected = sorted(p for p in root.glob(pattern) if p.is_file() and "site-packages" not in p.parts)
        assert list_files(DataConfig(source=str(root), glob=pattern)) == expected
    assert len(list_files(DataConfig(source=str(tmp_path)))) == 5  # a, .hidden, d/c, d/e/f, link.py
    assert list_files(DataConfig(source=str(tmp_path), glob="d/*.py")) == [tmp_path / "d" / "c.py"]


def test_batches_are_a_pure_function_of_seed_and_cursor(corpus):
    again = ByteCorpus(DataConfig(max_bytes=300_000), context=32, seed=0)
    for cursor in (0, 7, corpus.n_train - 3):  # the last one crosses into the second epoch
        x1, y1 = corpus.batch(cursor, 8)
        x2, y2 = again.batch(cursor, 8)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other_seed = ByteCorpus(DataConfig(max_bytes=300_000), context=32, seed=1)
    assert not torch.equal(corpus.batch(0, 8)[0], other_seed.batch(0, 8)[0])


def test_targets_are_inputs_shifted_by_one(corpus):
    x, y = corpus.batch(0, 4)
    assert x.shape == y.shape == (4, 32)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_cursor_continues_the_stream_without_replay(corpus):
    # two stages of 5 batches of 4 read exactly what one run of 10 batches reads
    one_run = torch.cat([corpus.batch(c, 4)[0] for c in range(0, 40, 4)])
    stage1 = torch.cat([corpus.batch(c, 4)[0] for c in range(0, 20, 4)])
    stage2 = torch.cat([corpus.batch(c, 4)[0] for c in range(20, 40, 4)])
    assert torch.equal(one_run, torch.cat([stage1, stage2]))
    # one epoch reads every non-overlapping train chunk exactly once
    n, width = corpus.n_train, corpus.context + 1
    epoch = corpus.batch(0, n)[0]
    chunks = corpus.train[: n * width].view(n, width)[:, :-1].long()
    assert sorted(map(tuple, epoch.tolist())) == sorted(map(tuple, chunks.tolist()))


def test_validation_batches_are_fixed_and_disjoint_from_train(corpus):
    a = corpus.val_batches(3, 4)
    b = corpus.val_batches(3, 4)
    assert len(a) == 3 and all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))
    val_bytes = bytes(corpus.val.tolist())
    assert val_bytes not in bytes(corpus.train.tolist())


def test_split_is_by_file(tmp_path):
    for i in range(40):
        (tmp_path / f"f{i:02d}.txt").write_text(f"file {i} " * 20)
    corpus = ByteCorpus(DataConfig(source=str(tmp_path), glob="*.txt", val_every=20), context=8, seed=0)
    val = bytes(corpus.val.tolist()).decode()
    assert val == ("file 19 " * 20) + ("file 39 " * 20)


def test_single_file_source_and_errors(tmp_path):
    text = tmp_path / "one.txt"
    text.write_text("abcdefghij" * 100)
    corpus = ByteCorpus(DataConfig(source=str(text)), context=8, seed=0)
    assert len(corpus.train) + len(corpus.val) == 1000 and len(corpus.val) == 50
    with pytest.raises(FileNotFoundError, match="neither a file nor a directory"):
        ByteCorpus(DataConfig(source=str(tmp_path / "missing")), context=8, seed=0)
    with pytest.raises(ValueError, match="corpus too small for context 512"):
        ByteCorpus(DataConfig(source=str(text)), context=512, seed=0)


def _bytes_read() -> int:
    """Bytes this process has read through read(2) and friends so far (Linux)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").is_file(), reason="needs Linux /proc/self/io")
def test_max_bytes_stops_reading_at_the_cap(tmp_path):
    big = tmp_path / "big.txt"
    with big.open("wb") as f:
        for _ in range(64):
            f.write(bytes(range(256)) * 4096)  # 64 MB
    before = _bytes_read()
    corpus = ByteCorpus(DataConfig(source=str(big), max_bytes=10_000), context=8, seed=0)
    assert _bytes_read() - before < 1_000_000  # not the 64 MB file: the cap and a buffer or two
    assert bytes(corpus.train.tolist()) + bytes(corpus.val.tolist()) == big.read_bytes()[:10_000]
    # over many files: the ones after the cap are not opened, the one at the cap is read up to it
    for i in range(5):
        (tmp_path / "many" / f"{i}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "many" / f"{i}.txt").write_bytes(bytes([65 + i]) * 4_000_000)
    before = _bytes_read()
    corpus = ByteCorpus(DataConfig(source=str(tmp_path / "many"), glob="*.txt", max_bytes=4_500_000), 8, 0)
    assert _bytes_read() - before < 5_500_000
    assert len(corpus.train) + len(corpus.val) == 4_500_000
