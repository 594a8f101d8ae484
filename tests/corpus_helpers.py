"""Small corpora and a tokenizer for the corpus tests, made from the standard library's own files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from models.data.bytes import stdlib_dir


def stdlib_documents(n: int, max_size: int = 12_000) -> list[str]:
    """The texts of the first ``n`` sorted top-level stdlib modules of at most ``max_size`` bytes."""
    files = [p for p in sorted(stdlib_dir().glob("*.py")) if p.stat().st_size <= max_size][:n]
    assert len(files) == n
    return [p.read_text(encoding="utf-8") for p in files]


def byte_bpe(texts: list[str], vocab_size: int = 400):
    """A byte-level BPE trained with the tokenizers library: decode(encode(text)) == text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def tokenizer_sha256(tok) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": i, field: text, "meta": {"n": i}} if i % 2 else {field: text}) + "\n")
    return path


def write_parquet(path: Path, texts: list[str], field: str = "text", row_group_size: int = 4) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": list(range(len(texts))), field: texts}), path, row_group_size=row_group_size)
    return path


def write_text_files(folder: Path, texts: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        (folder / f"doc{i:03d}.txt").write_text(text, encoding="utf-8")
    return folder


def pretrained_llama(directory: Path, layers: int, tied: bool) -> Path:
    """A random small Llama (hidden 32, 4 heads, 2 key-value heads) with a 300-token BPE, saved the way any Hugging
    Face model directory is: what the import tests grow."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from models.data import tokenizer as tokenizers
    from models.data.bytes import ByteCorpus, DataConfig

    text = ByteCorpus(DataConfig(max_bytes=200_000), 32, 0).train.numpy().tobytes()
    tok = tokenizers.train_bpe(text, tokenizers.TrainTokenizer(vocab_size=300))
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=tokenizers.EOT).save_pretrained(directory)
    return directory
