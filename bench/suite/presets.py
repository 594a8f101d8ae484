"""The benchmark's presets: one model and data set each, the budgets, the seeds and the tuning effort.

Every preset runs the same protocol (bench/main.py): per budget, every arm tuned with the same number
of trials on the tuning seeds, then the figures from the held-out seeds. They differ in size, and ``llama``
in architecture and data: transformers' LlamaForCausalLM on the standard library's text, tokenized by a
byte-level BPE learnt from the training split.
"""

from __future__ import annotations

from bench.suite.schedules import FIELD
from bench.suite.spec import Preset, Tuning
from models.data.bytes import DataConfig
from models.data.tokenizer import TokenizerConfig, TrainTokenizer
from models.families.gpt import GPTConfig
from models.families.llama import LlamaFamilyConfig
from models.train.loop import TrainConfig

# 12 layers at d_model 24 (101k parameters): small enough that 6 arms x (trials + 3 held-out seeds) fit the
# time limits on 2 idle CPU cores. Estimated from all six arms of one seed at 2 tokens per parameter, timed
# (docs/benchmarks.md, "Cost"): quick ~5-8 min (one budget, 4 trials), budgets ~35-65 min (three, 8 trials).
_SMALL = GPTConfig(n_layers=12, d_model=24, n_heads=2, d_ff=96, context=64)
_SMALL_DATA = DataConfig(max_bytes=3_000_000)  # 2.85 MB of train bytes: the largest budget (0.8M) stays in 1 epoch
_SMALL_TRAIN = TrainConfig(batch_size=16)
_HELDOUT = [1, 2, 3]

# The Llama preset: 12 layers at hidden 48 (4 query heads of 12, 2 key-value heads, SwiGLU 128 = 8/3 x 48),
# a 768-token BPE (256 bytes + <|endoftext|> + 511 merges), 379k parameters, 19% of them in the untied
# embeddings and head. At this width a step costs mostly transformers' per-layer overhead, so a longer
# context (128 tokens, ~330 bytes of Python) makes each step carry more tokens at little extra cost.
# Cost (docs/benchmarks.md, "The llama preset"): one scratch trial of 370 steps took 69 s on 2 idle cores,
# so the whole protocol (4 trials x 6 arms + 3 held-out seeds) is an estimated 30-45 minutes there.
_LLAMA_VOCAB = 768
_LLAMA = LlamaFamilyConfig(
    arch="llama", n_layers=12, d_model=48, n_heads=4, n_kv_heads=2, d_ff=128, context=128, vocab_size=_LLAMA_VOCAB
)
# documents (one per file, every 20th validation); 8 MB so that 8 tokens/param (--set budgets=[0.5,2,8]) stays
# within one epoch; a few of the standard library's files are not UTF-8
_TEXT = DataConfig(format="text", encoding_errors="replace", max_bytes=8_000_000)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="quick",
            model=_SMALL,
            data=_SMALL_DATA,
            train=_SMALL_TRAIN,
            budgets=[2.0],  # the middle budget of `budgets`: its studies are the first trials of those
            tuning=Tuning(trials=4, seeds=[0], startup_trials=2),
            heldout_seeds=_HELDOUT,
            schedules=FIELD,
        ),
        Preset(
            name="budgets",
            model=_SMALL,
            data=_SMALL_DATA,
            train=_SMALL_TRAIN,
            budgets=[0.5, 2.0, 8.0],  # 16x in tokens
            flow_budget=8.0,  # the flow's stages are longest here: where orchestration is judged on this size
            tuning=Tuning(trials=8, seeds=[0], startup_trials=4),
            heldout_seeds=_HELDOUT,
            schedules=FIELD,
        ),
        Preset(  # the reference size of the earlier rounds; its orchestration figure is the <= 0.03 goal's
            name="cpu",
            model=GPTConfig(n_layers=12, d_model=128, n_heads=4, d_ff=512, context=128),
            data=DataConfig(),
            train=TrainConfig(batch_size=32),
            budgets=[0.5, 2.0, 8.0],
            tuning=Tuning(trials=8, seeds=[0], startup_trials=4),
            heldout_seeds=_HELDOUT,
            schedules=FIELD,
        ),
        Preset(  # the same protocol at GPU size (bf16 autocast; MFU against a bf16 matmul peak)
            name="gpu",
            model=GPTConfig(n_layers=12, d_model=512, n_heads=8, d_ff=2048, context=512),
            data=DataConfig(),
            train=TrainConfig(batch_size=32, precision="bf16"),
            budgets=[0.5, 2.0, 8.0],
            tuning=Tuning(trials=8, seeds=[0], startup_trials=4),
            heldout_seeds=_HELDOUT,
            schedules=FIELD,
            evals_per_run=40,
            eval_batches=4,
            throughput_steps=30,
            matmul_size=8192,
            peak_dtype="bfloat16",
        ),
        Preset(  # the same protocol on a Llama with a trained BPE (one budget, as quick)
            name="llama",
            model=_LLAMA,
            data=_TEXT,
            tokenizer=TokenizerConfig(train=TrainTokenizer(vocab_size=_LLAMA_VOCAB)),
            train=TrainConfig(batch_size=16),
            budgets=[2.0],
            tuning=Tuning(trials=4, seeds=[0], startup_trials=2),
            heldout_seeds=_HELDOUT,
            schedules=FIELD,
        ),
        Preset(  # for tests: seconds, not minutes
            name="tiny",
            model=GPTConfig(n_layers=12, d_model=16, n_heads=2, d_ff=32, context=16),
            data=DataConfig(max_bytes=200_000),
            train=TrainConfig(batch_size=4),
            budgets=[0.03, 0.06],
            tuning=Tuning(trials=2, seeds=[0], startup_trials=1),
            heldout_seeds=[1, 2],
            schedules=FIELD,
            evals_per_run=4,
            eval_batches=1,
            eval_batch_size=4,
            throughput_steps=4,
            throughput_rounds=2,
            matmul_size=128,
        ),
        Preset(  # the llama preset's machinery, for tests: a 300-token BPE, 12 layers at hidden 16
            name="tiny-llama",
            model=LlamaFamilyConfig(
                arch="llama", n_layers=12, d_model=16, n_heads=2, n_kv_heads=1, d_ff=32, context=16, vocab_size=300
            ),
            data=DataConfig(format="text", encoding_errors="replace", max_bytes=200_000),
            tokenizer=TokenizerConfig(train=TrainTokenizer(vocab_size=300)),
            train=TrainConfig(batch_size=4),
            budgets=[0.03],
            tuning=Tuning(trials=2, seeds=[0], startup_trials=1),
            heldout_seeds=[1, 2],
            schedules=FIELD,
            evals_per_run=4,
            eval_batches=1,
            eval_batch_size=4,
            throughput_steps=4,
            throughput_rounds=2,
            matmul_size=128,
        ),
    ]
}
