"""Bad corpora: each mistake is one line that names the file (and line or row), and nothing is cached."""

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from models.data.bytes import CorpusError, DataConfig, UnreadableFile
from models.data.corpus import open_corpus
from models.data.tokenizer import Vocabulary
from tests.corpus_helpers import byte_bpe, stdlib_documents, tokenizer_sha256, write_jsonl, write_parquet

DOCS = stdlib_documents(4)


@pytest.fixture(scope="module")
def tok():
    return byte_bpe(DOCS, vocab_size=300)


def fails(cfg: DataConfig, tok, cache: Path, error=CorpusError, context: int = 16) -> str:
    """The one-line message ``open_corpus`` raises; checks that no corpus directory was left in the cache."""
    with pytest.raises(error) as info:
        open_corpus(cfg, context, 0, Vocabulary(tok, tokenizer_sha256(tok)), cache, progress=False)
    message = str(info.value)
    assert "\n" not in message and len(message) < 300
    left = [p.name for p in cache.iterdir() if p.name != "hf-datasets"] if cache.exists() else []
    assert left == [], left
    return message


def jsonl(folder: Path, **kw) -> DataConfig:
    return DataConfig(format="jsonl", source=str(folder), glob="*.jsonl", **kw)


def test_a_jsonl_line_that_is_not_json_names_file_and_line(tmp_path, tok, capfd):
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    (tmp_path / "b.jsonl").write_text('{"text": "fine"}\n\n{"text": "also fine"}\n{"text": oops}\n')
    message = fails(jsonl(tmp_path), tok, tmp_path / "cache")
    assert message.startswith(f"{tmp_path / 'b.jsonl'}:4: not JSON (Expecting value")
    assert capfd.readouterr().err == ""  # datasets' own error log is not printed on top


@pytest.mark.parametrize(
    ("record", "says"),
    [
        ('{"body": "no text here"}', "record has no field 'text' (data.text_field)"),
        ('["a", "list"]', "record is an array, not an object with 'text'"),
        ('{"text": 7}', "field 'text' is a number, not a string"),
        ('{"text": null}', "field 'text' is null, not a string"),
    ],
)
def test_a_jsonl_record_without_a_string_text_field(tmp_path, tok, record, says):
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n' + record + "\n")
    assert fails(jsonl(tmp_path), tok, tmp_path / "cache") == f"{tmp_path / 'a.jsonl'}:2: {says}"


def test_text_field_names_another_field(tmp_path, tok):
    write_jsonl(tmp_path / "a.jsonl", DOCS, field="content")
    assert "record has no field 'text'" in fails(jsonl(tmp_path), tok, tmp_path / "cache")
    corpus = open_corpus(
        jsonl(tmp_path, text_field="content"), 8, 0, Vocabulary(tok, "sha"), tmp_path / "cache", progress=False
    )
    assert corpus.manifest.train.documents == 3


def test_a_parquet_file_without_the_column(tmp_path, tok):
    write_parquet(tmp_path / "a.parquet", DOCS)
    write_parquet(tmp_path / "b.parquet", DOCS, field="body")
    cfg = DataConfig(format="parquet", source=str(tmp_path), glob="*.parquet")
    message = fails(cfg, tok, tmp_path / "cache")
    assert (
        message
        == f"{tmp_path / 'b.parquet'}: parquet file has no column 'text' (data.text_field); it has ['id', 'body']"
    )


def test_parquet_column_of_another_type_null_row_or_not_parquet(tmp_path, tok):
    pq.write_table(pa.table({"text": [1, 2, 3]}), tmp_path / "ints.parquet")
    cfg = DataConfig(format="parquet", source=str(tmp_path / "ints.parquet"))
    assert fails(cfg, tok, tmp_path / "c1").endswith("parquet column 'text' is int64, not a string")
    pq.write_table(pa.table({"text": ["a document", None]}), tmp_path / "null.parquet")
    cfg = DataConfig(format="parquet", source=str(tmp_path / "null.parquet"))
    assert fails(cfg, tok, tmp_path / "c2").endswith("null.parquet: row 1: column 'text' is null")
    (tmp_path / "fake.parquet").write_text("not parquet at all")
    cfg = DataConfig(format="parquet", source=str(tmp_path / "fake.parquet"))
    assert "fake.parquet: not a readable parquet file (" in fails(cfg, tok, tmp_path / "c3")


def test_a_corpus_empty_after_filtering(tmp_path, tok):
    (tmp_path / "a.jsonl").write_text('{"text": ""}\n{"text": "   \\n\\t "}\n\n')
    assert "no jsonl documents left after dropping empty ones" in fails(jsonl(tmp_path), tok, tmp_path / "cache")
    (tmp_path / "a.jsonl").write_text('{"text": "a single document"}\n{"text": ""}\n')
    assert "1 document(s); a train and a validation split need 2 or more" in fails(jsonl(tmp_path), tok, tmp_path / "c")


def test_missing_files(tmp_path, tok):
    message = fails(jsonl(tmp_path / "nowhere"), tok, tmp_path / "cache", FileNotFoundError)
    assert "is neither a file nor a directory" in message
    (tmp_path / "data").mkdir()
    assert "has no files matching '*.jsonl'" in fails(jsonl(tmp_path / "data"), tok, tmp_path / "c", FileNotFoundError)


def test_a_file_that_cannot_be_read(tmp_path, tok):
    # /proc/self/mem is a regular file that opens but whose first page cannot be read (EIO), even for root
    if not Path("/proc/self/mem").is_file():
        pytest.skip("needs Linux /proc")
    cfg = DataConfig(format="text", source="/proc/self/mem")
    message = fails(cfg, tok, tmp_path / "cache", UnreadableFile)
    assert message == "cannot read data file '/proc/self/mem': Input/output error"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_file_without_read_permission(tmp_path, tok):
    path = write_jsonl(tmp_path / "a.jsonl", DOCS)
    path.chmod(0)
    assert "cannot read data file" in fails(jsonl(tmp_path), tok, tmp_path / "cache", UnreadableFile)


def test_text_that_is_not_utf8(tmp_path, tok):
    (tmp_path / "a.txt").write_text("fine text\n")
    (tmp_path / "b.txt").write_bytes("caf\xe9 latin-1\n".encode("latin-1"))
    cfg = DataConfig(format="text", source=str(tmp_path), glob="*.txt")
    assert fails(cfg, tok, tmp_path / "cache").startswith(f"{tmp_path / 'b.txt'}: not UTF-8 text")
    replaced = DataConfig(format="text", source=str(tmp_path), glob="*.txt", encoding_errors="replace")
    assert (
        open_corpus(replaced, 2, 0, Vocabulary(tok, "sha"), tmp_path / "cache", progress=False).manifest.val.documents
        == 1
    )


def test_a_context_longer_than_the_corpus(tmp_path, tok):
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    with pytest.raises(CorpusError, match=r"^corpus too small for context 100000: \d+ train and \d+ val tokens$"):
        open_corpus(jsonl(tmp_path), 100_000, 0, Vocabulary(tok, "sha"), tmp_path / "cache", progress=False)


def test_an_eos_token_the_tokenizer_lacks(tmp_path, tok):
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    message = fails(jsonl(tmp_path, eos_token="</s>"), tok, tmp_path / "cache")
    assert message == "data.eos_token '</s>' is not in the tokenizer's vocabulary"


def test_config_mistakes():
    with pytest.raises(ValidationError, match="data.format jsonl needs data.source"):
        DataConfig(format="jsonl")
    with pytest.raises(ValidationError):
        DataConfig(format="csv")
