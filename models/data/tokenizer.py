"""Tokenizers, from the ``tokenizers`` library: the byte vocabulary (the default), a byte-level BPE trained on
the training split, or a local ``tokenizer.json``.

    tokenizer: {}                          256 byte tokens, id == byte value (what the byte GPT reads)
    tokenizer: {train: {vocab_size: N}}    byte-level BPE: 256 bytes + <|endoftext|> + merges, N in all
    tokenizer: {path: DIR_OR_FILE}         a tokenizer.json, or a directory holding one

Every tokenizer here is byte-level (the 256 byte symbols are its alphabet, GPT-2's byte-to-unicode map),
so any text encodes without an unknown token and bits per byte are exact. A tokenizer's identity is
:func:`sha256` of its canonical serialization (``Tokenizer.to_str()``), which is also the exact content of
the ``tokenizer.json`` a version carries: the stage key hashes it, growth refuses a parent with another.
A :class:`Vocabulary` is a tokenizer with that identity, hashed once and carried together from there on.
Training is deterministic: the same text in the same order gives the same merges, byte for byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from models.errors import UserError

BYTE_ALPHABET = 256
EOT = "<|endoftext|>"  # the BPE's one special token: end of text (HF eos/pad)
TOKENIZER_FILE = "tokenizer.json"
_LINES_PER_BATCH = 1000


class TokenizerError(UserError, ValueError):
    """A tokenizer that cannot be loaded or does not fit; one line."""


class TrainTokenizer(BaseModel):
    """``tokenizer.train``: a byte-level BPE learnt from the pipeline's training split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int  # the model's vocabulary: 256 bytes + <|endoftext|> + (vocab_size - 257) merges
    max_bytes: int | None = Field(None, ge=1)  # learn from at most this many bytes of the training split

    @field_validator("vocab_size")
    @classmethod
    def _covers_the_bytes(cls, n: int) -> int:
        if n <= BYTE_ALPHABET:
            raise ValueError(
                f"vocab_size {n} is smaller than the byte alphabet plus {EOT} ({BYTE_ALPHABET + 1}): "
                "a byte-level BPE needs every byte"
            )
        return n


class TokenizerConfig(BaseModel):
    """``tokenizer``: the byte vocabulary unless ``train`` or ``path`` says otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: TrainTokenizer | None = None
    path: str | None = None  # a tokenizer.json file or a directory with one (e.g. a Hugging Face model directory)

    @model_validator(mode="after")
    def _one_source(self) -> TokenizerConfig:
        if self.train is not None and self.path is not None:
            raise ValueError("set tokenizer.train or tokenizer.path, not both")
        return self

    @property
    def kind(self) -> str:
        return "train" if self.train else "path" if self.path else "bytes"


def _byte_level(tok: Tokenizer) -> Tokenizer:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


@cache
def _unicode_to_byte_table() -> dict[str, int]:
    """GPT-2's byte-to-unicode map, inverted (the ByteLevel alphabet, printable bytes first)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, codes)}


def byte_tokenizer() -> Tokenizer:
    """256 tokens, token id == byte value, no merges, no special tokens."""
    tok = _byte_level(Tokenizer(models.BPE(vocab=_unicode_to_byte_table(), merges=[])))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)  # no word splits needed
    return tok


def _lines(text: bytes) -> Iterator[list[str]]:
    lines = text.decode("utf-8", errors="replace").splitlines(keepends=True)
    for i in range(0, len(lines), _LINES_PER_BATCH):
        yield lines[i : i + _LINES_PER_BATCH]


def train_bpe(text: bytes, cfg: TrainTokenizer) -> Tokenizer:
    """A byte-level BPE of ``cfg.vocab_size`` tokens learnt from ``text`` (the training split), deterministically."""
    tok = _byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[EOT],
        show_progress=False,
    )
    tok.train_from_iterator(_lines(text[: cfg.max_bytes]), trainer=trainer)
    return tok


def load(path: str | Path) -> Tokenizer:
    """A local tokenizer.json, or the one in a directory; a missing or malformed file is a TokenizerError."""
    file = Path(path)
    if file.is_dir():
        file = file / TOKENIZER_FILE
    if not file.is_file():
        raise TokenizerError(f"tokenizer {str(path)!r}: no {TOKENIZER_FILE} there")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:  # the library raises a bare Exception for malformed JSON
        raise TokenizerError(f"tokenizer {str(file)!r} cannot be read: {str(e).splitlines()[0]}") from None


def from_str(text: str) -> Tokenizer:
    return Tokenizer.from_str(text)


def sha256(tok: Tokenizer) -> str:
    """The tokenizer's identity: sha256 of its canonical serialization (what tokenizer.json holds)."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


@dataclass(frozen=True)
class Vocabulary:
    """A tokenizer and its sha256, computed once: ``Vocabulary.of(tok)``, or ``Vocabulary.bytes()``."""

    tokenizer: Tokenizer
    sha256: str

    @classmethod
    def of(cls, tok: Tokenizer) -> Vocabulary:
        return cls(tok, sha256(tok))

    @staticmethod
    @cache
    def bytes() -> Vocabulary:
        """The byte vocabulary (256 tokens, id == byte value)."""
        return Vocabulary.of(byte_tokenizer())

    @property
    def is_bytes(self) -> bool:
        return self.sha256 == Vocabulary.bytes().sha256

    @property
    def identity(self) -> str | None:
        """What the stage key and the registry's ``tokenizer_sha256`` record: None for the byte vocabulary (a
        constant of the code, nothing stored or hashed), else the sha256."""
        return None if self.is_bytes else self.sha256


def vocab_size(tok: Tokenizer) -> int:
    return tok.get_vocab_size(with_added_tokens=True)


def eos_id(tok: Tokenizer) -> int | None:
    return tok.token_to_id(EOT)


def encode(tok: Tokenizer, text: bytes) -> torch.Tensor:
    """Token ids (N,) int32 of ``text``, encoded line by line (as the BPE was trained) and concatenated."""
    ids: list[int] = []
    for batch in _lines(text):
        for enc in tok.encode_batch(batch, add_special_tokens=False):
            ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.int32)


def decode(tok: Tokenizer, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=False)


def token_bytes(tok: Tokenizer) -> torch.Tensor:
    """(V,) int64: how many bytes of text each token id stands for (special tokens: 0). For bits per byte."""
    table = _unicode_to_byte_table()
    lengths = torch.zeros(vocab_size(tok), dtype=torch.int64)
    special = {t.content for t in tok.get_added_tokens_decoder().values()}
    for token, i in tok.get_vocab(with_added_tokens=True).items():
        if token not in special and i < len(lengths):
            lengths[i] = sum(1 for c in token if c in table)
    return lengths
