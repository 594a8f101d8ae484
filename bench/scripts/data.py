"""Data loading speed: tokenizing a corpus into shards, and the shard loader against a training step.

    PYTHONPATH=. python bench/scripts/data.py [--max-bytes 8000000] [--vocab 4096] [--batch 32] [--context 256]

Everything is measured in one process, side by side, on the standard library's text (``format: text``,
a document per file), so the figures are ratios on the same machine at the same moment:

1. **Tokenizing**: ``ensure_shards`` end to end (datasets' streaming read, split, ``encode_batch_fast``,
   shard writes, sha256s, manifest), in MB of text per second; next to it ``encode_batch_fast`` alone on
   the same texts already in memory: the ratio is what reading and writing cost on top of the tokenizer.
2. **Loading**: ``TokenCorpus.batch`` at (batch, context), cursors walking the epoch (rows scattered by
   the permutation), against one training step (forward, backward, AdamW) of a small Llama
   (``transformers.LlamaForCausalLM``, the tokenizer's vocabulary) at the same batch and context. The
   loader's share of a step is the figure that matters: the goal is < 2%. ``ByteCorpus.batch`` is timed too.

Medians of repeats. Set OMP_NUM_THREADS (torch) and RAYON_NUM_THREADS (tokenizers) for a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

from models.data.bytes import ByteCorpus, DataConfig
from models.data.corpus import ensure_shards
from models.data.documents import read_documents
from models.data.shards import TokenCorpus

MODELS = [(128, 4), (32, 2)]  # (hidden size, layers): a small Llama and the smallest one worth training


def byte_bpe(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tokenizing(cfg: DataConfig, tok, work: Path) -> tuple[TokenCorpus, dict]:
    texts = [doc.text for doc in read_documents(cfg, work / "hf-datasets")]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    encode = median_seconds(lambda: tok.encode_batch_fast(texts, add_special_tokens=False), 3)
    builds = []
    for i in range(3):  # a fresh cache directory each time: a full build, nothing found
        start = time.perf_counter()
        directory, manifest = ensure_shards(cfg, tok, "bench", work / f"cache{i}", progress=False)
        builds.append(time.perf_counter() - start)
    build = statistics.median(builds)
    return manifest, {"directory": directory, "mb": mb, "docs": len(texts), "encode": encode, "build": build}


def train_step_seconds(
    vocab_size: int, batch: tuple[torch.Tensor, torch.Tensor], context: int, hidden: int, layers: int
) -> float:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = batch

    def step():
        logits = model(input_ids=x).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # first step: allocations, AdamW state
    return median_seconds(step, 5)


def loader_seconds(corpus, batch_size: int, n: int = 200) -> float:
    """Seconds per batch, cursors walking the epoch from a point that depends on the repeat."""
    offsets = iter(range(0, 10**9, n * batch_size))

    def run():
        first = next(offsets) % max(1, corpus.n_train - n * batch_size)
        for k in range(n):
            corpus.batch(first + k * batch_size, batch_size)

    return median_seconds(run, 5) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-bytes", type=int, default=8_000_000, help="text of the stdlib corpus tokenized")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--context", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = DataConfig(format="text", max_bytes=args.max_bytes, encoding_errors="replace")
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        work = Path(tmp)
        sample = [doc.text for doc in islice(read_documents(cfg, work / "hf-datasets"), 200)]
        tok = byte_bpe(sample, args.vocab)
        manifest, t = tokenizing(cfg, tok, work)
        corpus = TokenCorpus(t["directory"], manifest, args.context, seed=0)
        per_batch = loader_seconds(corpus, args.batch)
        byte_per_batch = loader_seconds(ByteCorpus(DataConfig(max_bytes=args.max_bytes), args.context, 0), args.batch)
        batch = corpus.batch(0, args.batch)
        steps = {size: train_step_seconds(manifest.vocab_size, batch, args.context, *size) for size in MODELS}
    tokens = manifest.train.tokens + manifest.val.tokens
    print(
        f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset')}"
    )
    print(
        f"corpus: stdlib text, {t['mb']:.1f} MB in {t['docs']} documents -> {tokens / 1e6:.2f} M tokens "
        f"(byte-level BPE, vocab {manifest.vocab_size}, {manifest.dtype}, {t['mb'] * 1e6 / tokens:.2f} bytes/token)"
    )
    print(
        f"tokenizing: shards built in {t['build']:.2f} s = {t['mb'] / t['build']:.2f} MB/s; "
        f"encode_batch_fast alone {t['mb'] / t['encode']:.2f} MB/s; "
        f"build / encode time = {t['build'] / t['encode']:.2f}"
    )
    print(
        f"loader: {args.batch} x {args.context} tokens per batch: {per_batch * 1e3:.3f} ms "
        f"({1 / per_batch:,.0f} batches/s, {args.batch * args.context / per_batch / 1e6:.1f} M tokens/s); "
        f"ByteCorpus {byte_per_batch * 1e3:.3f} ms"
    )
    for (hidden, layers), step in steps.items():
        print(
            f"train step (Llama {layers} layers, hidden {hidden}, vocab {manifest.vocab_size}): {step * 1e3:.1f} ms; "
            f"loader / step = {per_batch / step:.2%} (goal < 2%)"
        )


if __name__ == "__main__":
    main()
