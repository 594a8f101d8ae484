"""The documents of a ``text | jsonl | parquet`` corpus, read with the `datasets` library from local files.

    for is_val, doc in split_documents(read_documents(cfg, hf_cache), cfg.val_every): ...

``read_documents`` yields the non-empty documents in a fixed order (files sorted, records in file
order), the last one cut where ``max_bytes`` of UTF-8 text is reached; ``split_documents`` sends every
``val_every``-th to validation. Each mistake in the input ends in one line naming the file (and the
line or row): a ``CorpusError`` (ValueError) or an ``UnreadableFile`` (FileNotFoundError).

Reading is *streaming* (``load_dataset(..., streaming=True)``): files are read in 10 MB chunks as
the tokenizer consumes them, so memory is bounded by the largest document, nothing but lock files
goes to the datasets cache (which is ``hf_cache``, never ``~/.cache``), and a ``max_bytes`` run
stops reading early. The non-streaming mode would first convert the whole corpus into an Arrow
copy on disk, which the token shards make useless.

JSONL goes through datasets' ``text`` builder (one example per line) and ``json.loads``, not its
``json`` builder: that one infers one Arrow schema from the first block and fails on records whose
other fields differ (``CastError``), turns a number into the string ``"7"`` when told the schema,
and reports a bad line as a row of its block, not a line of the file.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from models.data.bytes import CorpusError, DataConfig, UnreadableFile, list_files, stdlib_dir

_TEXT_FILES_PER_DATASET = 128
_JSON_TYPES = {dict: "an object", list: "an array", int: "a number", float: "a number", bool: "a boolean"}


@dataclass(frozen=True)
class Document:
    text: str
    n_bytes: int  # UTF-8 bytes of text
    source_bytes: int  # bytes of the source files this document accounts for (the progress bar's unit)


def source_files(cfg: DataConfig) -> list[Path]:
    """The sorted source files, each checked to open (and, for parquet, to have a string ``text_field``)."""
    files = list_files(cfg)
    for path in files:
        try:
            with path.open("rb"):
                pass
        except OSError as e:
            raise UnreadableFile(f"cannot read data file {str(path)!r}: {e.strerror or e}") from None
        if cfg.format == "parquet":
            _check_parquet_column(path, cfg.text_field)
    return files


def source_digest(files: list[Path], root: Path) -> str:
    """sha256 over every source file's path (relative to ``root``), size and content, read in 1 MB blocks."""
    h = hashlib.sha256()
    for path in files:
        content = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                content.update(block)
        h.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\0{content.hexdigest()}\n".encode())
    return h.hexdigest()


def source_root(cfg: DataConfig) -> Path:
    """What source paths are relative to: the source directory, a single file's folder, or the stdlib."""
    root = Path(cfg.source) if cfg.source else stdlib_dir()
    return root.parent if root.is_file() else root


def read_documents(cfg: DataConfig, hf_cache: Path, files: list[Path] | None = None) -> Iterator[Document]:
    """The corpus's non-empty documents in order, up to ``cfg.max_bytes`` of UTF-8 text (``files``: as listed
    by ``source_files(cfg)``, when the caller has them)."""
    files = files or source_files(cfg)
    readers = {"text": _text_documents, "jsonl": _jsonl_documents, "parquet": _parquet_documents}
    budget, skipped = cfg.max_bytes, 0
    with _quiet_datasets():
        for text, source_bytes in readers[cfg.format](cfg, files, hf_cache):
            if not text.strip():  # empty documents are dropped; their bytes move the bar with the next one
                skipped += source_bytes
                continue
            n_bytes = len(text.encode("utf-8"))
            last = budget is not None and n_bytes >= budget
            if last:  # cut at the cap, on a character boundary
                text = text.encode("utf-8")[:budget].decode("utf-8", errors="ignore")
                n_bytes = len(text.encode("utf-8"))
            yield Document(text, n_bytes, skipped + source_bytes)
            if last:
                return
            skipped, budget = 0, None if budget is None else budget - n_bytes


def split_documents(docs: Iterator[Document], val_every: int) -> Iterator[tuple[bool, Document]]:
    """(is_val, document): every ``val_every``-th document is validation, and the last one when there
    are fewer than that (the byte corpus's rule, by file). Holds one document back to know which is last."""
    pending, i = None, -1
    for i, doc in enumerate(docs):
        if pending is not None:
            yield (i - 1) % val_every == val_every - 1, pending
        pending = doc
    if pending is not None:
        yield i % val_every == val_every - 1 or i < val_every - 1, pending


def _load(builder: str, files: list[Path], hf_cache: Path, **options):
    import datasets

    return datasets.load_dataset(
        builder, data_files=[str(p) for p in files], split="train", streaming=True, cache_dir=str(hf_cache), **options
    )


def _text_documents(cfg: DataConfig, files: list[Path], hf_cache: Path) -> Iterator[tuple[str, int]]:
    # a streaming dataset per group of files: one per file costs ~3 ms each (5 s for the stdlib's 1,790),
    # one for all resolves every path before the first document (1 s) even when max_bytes needs a few
    options = dict(sample_by=cfg.text_unit, keep_linebreaks=True, encoding_errors=cfg.encoding_errors)
    for first in range(0, len(files), _TEXT_FILES_PER_DATASET):
        group = files[first : first + _TEXT_FILES_PER_DATASET]
        try:
            for row in _load("text", group, hf_cache, **options):
                yield row["text"], len(row["text"].encode("utf-8"))
        except (UnicodeDecodeError, OSError):
            raise _culprit(group, cfg.encoding_errors == "strict") from None


def _jsonl_documents(cfg: DataConfig, files: list[Path], hf_cache: Path) -> Iterator[tuple[str, int]]:
    field = cfg.text_field
    for path in files:  # one dataset per file: a mistake is reported by file and line
        options = dict(sample_by="line", keep_linebreaks=True, encoding_errors=cfg.encoding_errors)
        try:
            for number, row in enumerate(_load("text", [path], hf_cache, **options), start=1):
                line = row["text"]
                if not line.strip():
                    yield "", len(line.encode("utf-8"))
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CorpusError(f"{path}:{number}: not JSON ({e.msg}, column {e.colno})") from None
                if not isinstance(record, dict):
                    raise CorpusError(f"{path}:{number}: record is {_kind(record)}, not an object with {field!r}")
                if field not in record:
                    raise CorpusError(f"{path}:{number}: record has no field {field!r} (data.text_field)")
                value = record[field]
                if not isinstance(value, str):
                    raise CorpusError(f"{path}:{number}: field {field!r} is {_kind(value)}, not a string")
                yield value, len(line.encode("utf-8"))
        except (UnicodeDecodeError, OSError):
            raise _culprit([path], cfg.encoding_errors == "strict") from None


def _kind(value: object) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _check_parquet_column(path: Path, field: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise CorpusError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None
    if field not in schema.names:
        raise CorpusError(f"{path}: parquet file has no column {field!r} (data.text_field); it has {schema.names}")
    kind = schema.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise CorpusError(f"{path}: parquet column {field!r} is {kind}, not a string")


def _parquet_documents(cfg: DataConfig, files: list[Path], hf_cache: Path) -> Iterator[tuple[str, int]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    field = cfg.text_field
    for path in files:  # columns were checked by source_files; one dataset per file names a bad row's file
        size, n_rows = path.stat().st_size, pq.ParquetFile(path).metadata.num_rows
        try:
            for i, row in enumerate(_load("parquet", [path], hf_cache, columns=[field])):
                if row[field] is None:
                    raise CorpusError(f"{path}: row {i}: column {field!r} is null")
                yield row[field], size * (i + 1) // n_rows - size * i // n_rows  # the file's bytes spread over rows
        except (pa.ArrowException, OSError) as e:
            raise CorpusError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None


def _culprit(files: list[Path], strict_utf8: bool) -> Exception:
    """The one-line error for the first of ``files`` that cannot be read or is not UTF-8 (reading it again)."""
    for path in files:
        decoder = codecs.getincrementaldecoder("utf-8")("strict" if strict_utf8 else "replace")
        try:
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    decoder.decode(block)
                decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return CorpusError(f"{path}: not UTF-8 text (data.encoding_errors: replace reads it, bad bytes as U+FFFD)")
        except OSError as e:
            return UnreadableFile(f"cannot read data file {str(path)!r}: {e.strerror or e}")
    return UnreadableFile(f"cannot read the data files under {str(files[0].parent)!r}")


@contextlib.contextmanager
def _quiet_datasets():
    """datasets logs a failed file at ERROR before raising; the exception, turned into one line, says it."""
    import datasets

    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
