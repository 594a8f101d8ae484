"""Tokenizers: the byte vocabulary (id == byte), a deterministic BPE trained on the training split only, local
files and directories, the sha256 identity, save_pretrained -> AutoTokenizer, one-line refusals."""

import time

import pytest
from pydantic import ValidationError

from models.data import tokenizer as tokenizers
from models.data.bytes import ByteCorpus, DataConfig
from models.data.tokenizer import TokenizerConfig, TokenizerError, TrainTokenizer, Vocabulary
from tasks.config import load_config
from tasks.driver import resolve_tokenizer
from tasks.store import LocalStorage, tokenizer_store
from tasks.store.tokenizer_store import TokenizerMismatch

TEXT = "def main(argv):\n    return {'héllo': [1, 2, 3]}  # wörld\n".encode()


def test_the_byte_vocabulary_maps_each_byte_to_its_own_id():
    tok = tokenizers.byte_tokenizer()
    data = bytes(range(128)) + TEXT
    assert tokenizers.encode(tok, data).tolist() == list(data)
    assert tokenizers.decode(tok, list(data)) == data.decode()
    assert tokenizers.vocab_size(tok) == 256 and tokenizers.eos_id(tok) is None
    assert tokenizers.token_bytes(tok).tolist() == [1] * 256
    assert tokenizers.sha256(tok) == tokenizers.sha256(tokenizers.byte_tokenizer())  # a constant of the code


def test_bpe_training_is_deterministic_and_round_trips():
    text = ByteCorpus(DataConfig(max_bytes=300_000), 32, 0).train.numpy().tobytes()
    cfg = TrainTokenizer(vocab_size=600)
    began = time.perf_counter()
    a = tokenizers.train_bpe(text, cfg)
    seconds = time.perf_counter() - began
    b = tokenizers.train_bpe(text, cfg)
    assert tokenizers.sha256(a) == tokenizers.sha256(b)
    assert tokenizers.vocab_size(a) == 600 and tokenizers.eos_id(a) is not None
    ids = tokenizers.encode(a, TEXT)
    assert len(ids) < len(TEXT) and tokenizers.decode(a, ids.tolist()) == TEXT.decode()
    assert int(tokenizers.token_bytes(a)[ids.long()].sum()) == len(TEXT)  # bits per byte count real bytes
    assert seconds < 30  # generous: ~0.1 s here; a regression to pure Python would be minutes


def test_the_tokenizer_is_learnt_from_the_training_split_only(tmp_path):
    """Validation files never reach the tokenizer: changing them changes nothing."""
    src = tmp_path / "corpus"
    src.mkdir()
    for i in range(4):
        (src / f"{i}.py").write_text(f"def train_{i}(x):\n    return x * {i}\n" * 30)
    overrides = ["model.arch=llama", "model.context=16", "data.format=text", f"data.source={src}", "data.val_every=4"]
    overrides += ["tokenizer.train.vocab_size=300", "stages.0.steps=1", "stages.1.steps=1", "stages.2.steps=1"]
    spec, cache = load_config(None, overrides).stage_specs()[0], tmp_path / "cache"
    first = resolve_tokenizer(spec, cache).sha256
    (src / "3.py").write_text("class Validation:\n    only = 'never seen'\n" * 30)  # file 3 is validation
    assert resolve_tokenizer(spec, cache).sha256 == first
    (src / "0.py").write_text("class Training:\n    changed = True\n" * 30)
    assert resolve_tokenizer(spec, cache).sha256 != first


def test_a_vocabulary_is_hashed_once_and_travels_through_storage(tmp_path):
    """One value, the tokenizer and its sha256: stored under it, read back verified; the byte vocabulary is a
    constant of the code (identity None, nothing stored), a tampered stored one is refused."""
    byte = Vocabulary.bytes()
    assert byte.sha256 == tokenizers.sha256(tokenizers.byte_tokenizer()) and byte.is_bytes and byte.identity is None
    bpe = Vocabulary.of(tokenizers.train_bpe(TEXT * 50, TrainTokenizer(vocab_size=300)))
    assert bpe.sha256 == tokenizers.sha256(bpe.tokenizer) and bpe.identity == bpe.sha256 and not bpe.is_bytes
    storage = LocalStorage(tmp_path)
    assert tokenizer_store.put(storage, byte) is None and storage.list("") == []
    assert tokenizer_store.get(storage, None) == byte
    sha = tokenizer_store.put(storage, bpe)
    assert sha == bpe.sha256 and tokenizer_store.get(storage, sha).sha256 == sha
    (key,) = storage.list("tokenizers")
    storage.put(key, tokenizers.train_bpe(TEXT * 50, TrainTokenizer(vocab_size=290)).to_str().encode())
    with pytest.raises(TokenizerMismatch, match="refusing it"):
        tokenizer_store.get(storage, sha)


def test_a_local_file_or_directory_loads_and_save_pretrained_gives_an_autotokenizer(tmp_path):
    from transformers import AutoTokenizer

    tok = tokenizers.train_bpe(TEXT * 50, TrainTokenizer(vocab_size=300))
    (tmp_path / "tokenizer.json").write_text(tok.to_str())
    sha = tokenizers.sha256(tok)
    assert tokenizers.sha256(tokenizers.load(tmp_path)) == sha
    assert tokenizers.sha256(tokenizers.load(tmp_path / "tokenizer.json")) == sha
    # a version directory: PreTrainedTokenizerFast.save_pretrained, tokenizer.json kept canonical
    from models.families.llama import LlamaFamilyConfig
    from models.families.lookup import FAMILIES

    LLAMA = FAMILIES["llama"]

    model = LLAMA.build(
        LlamaFamilyConfig(
            arch="llama", n_layers=1, d_model=8, n_heads=2, n_kv_heads=1, d_ff=8, context=8, vocab_size=300
        )
    )
    out = tmp_path / "version"
    out.mkdir()
    LLAMA.save(model, out, tok, max_shard_bytes=5 * 10**9)
    assert tokenizers.sha256(tokenizers.load(out)) == sha
    auto = AutoTokenizer.from_pretrained(out)
    assert auto(TEXT.decode())["input_ids"] == tokenizers.encode(tok, TEXT).tolist()
    assert auto.eos_token == tokenizers.EOT and auto.eos_token_id == tokenizers.eos_id(tok)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p, "no tokenizer.json there"),
        (lambda p: (p / "tokenizer.json").write_text("{not json") and p / "tokenizer.json", "cannot be read"),
    ],
)
def test_a_missing_or_malformed_tokenizer_is_one_line(tmp_path, make, match):
    with pytest.raises(TokenizerError, match=match) as e:
        tokenizers.load(make(tmp_path))
    assert "\n" not in str(e.value)


def test_config_refusals():
    with pytest.raises(ValidationError, match="smaller than the byte alphabet"):
        TrainTokenizer(vocab_size=256)
    with pytest.raises(ValidationError, match="not both"):
        TokenizerConfig(train={"vocab_size": 300}, path="x")
    assert TokenizerConfig().kind == "bytes" and TokenizerConfig(path="x").kind == "path"
