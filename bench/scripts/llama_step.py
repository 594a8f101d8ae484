"""A Llama stage step inside the pipeline vs a bare training loop over the same transformers model.

    PYTHONPATH=. python bench/scripts/llama_step.py [--rounds 5 --steps 30 --layers 6]

Pipeline: the stage driver on configs/llama-demo.yaml's stage 1 (at ``--layers``): driver.prepare +
driver.train_prepared, i.e. models.train.loop.train with the stage's plan, the token-shard corpus's cursor
batches, the NaN check, the LR schedule and the hooks. Bare: ``LlamaForCausalLM(LlamaConfig(...))`` built
by bench.overhead.efficiency.bare_model from the same numbers, random token batches made up front, and forward /
cross-entropy / backward / clip / AdamW, nothing else: nothing is shared but torch and the transformers model class.

Per-step wall times between consecutive steps (evaluation steps left out: the pipeline's eval_every is
beyond the timed steps), the median of each run; each round runs both, in alternating order (ABBA), so that
load drifts and whatever the first run leaves behind hit both alike.
ratio = bare step time / pipeline step time (1.0: the pipeline costs nothing; goal >= 0.95).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from models.data.corpus import open_corpus
from models.train.plan import Hooks
from tasks import driver
from tasks.config import load_config

CONFIG = Path(__file__).parent.parent / "configs" / "llama-demo.yaml"
WARMUP = 3  # steps left out at the start of each run (allocator, caches)


def pipeline_step_times(spec, corpus) -> list[float]:
    stamps: list[float] = []
    prepared = driver.prepare(spec, None)
    driver.train_prepared(
        spec, prepared, hooks=Hooks(on_step=lambda info: stamps.append(time.perf_counter())), corpus=corpus
    )
    return [b - a for a, b in zip(stamps, stamps[1:])][WARMUP:-1]  # the last step also evaluates


def bare_step_times(spec, steps: int) -> list[float]:
    from bench.overhead.efficiency import (
        bare_model,  # the model as its family builds it: transformers' LlamaForCausalLM
    )

    m, t = spec.model, spec.train
    torch.manual_seed(0)
    model = bare_model(m).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=(0.9, t.beta2))
    batches = torch.randint(0, m.vocab_size, (steps, t.batch_size, m.context + 1))
    stamps = []
    for seq in batches:
        x, y = seq[:, :-1], seq[:, 1:]
        logits = model(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        loss.item()
        stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:])][WARMUP:-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    overrides = [f"stages=[{{n_layers: {args.layers}, steps: {args.steps}}}]", "checkpoint.every=0"]
    overrides += [f"train.eval_every={args.steps + 1}", "data.max_bytes=1000000", *args.overrides]
    spec = load_config(CONFIG, overrides).stage_specs()[0]
    cache = Path(tempfile.mkdtemp(prefix="staged-bench-cache-"))
    vocabulary = driver.resolve_tokenizer(spec, cache)
    corpus = open_corpus(spec.data, spec.model.context, spec.seed, vocabulary, cache, progress=False)
    m, t = spec.model, spec.train
    print(
        f"llama {m.n_layers} layers, hidden {m.d_model}, {m.n_heads}/{m.n_kv_heads} heads, d_ff {m.d_ff}, "
        f"vocab {m.vocab_size}, batch {t.batch_size} x {m.context}, {torch.get_num_threads()} threads"
    )
    ratios: dict[str, list[float]] = {"median": [], "fastest": []}
    for r in range(args.rounds):
        runs = {
            "pipeline": lambda: pipeline_step_times(spec, corpus),
            "bare": lambda: bare_step_times(spec, args.steps),
        }
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]  # ABBA: whichever runs second is not always the same
        times = {name: runs[name]() for name in order}
        pipe, bare = statistics.median(times["pipeline"]), statistics.median(times["bare"])
        ratios["median"].append(bare / pipe)
        ratios["fastest"].append(min(times["bare"]) / min(times["pipeline"]))  # least disturbed steps (shared cores)
        steps = f"pipeline {1000 * pipe:7.2f} ms/step   bare {1000 * bare:7.2f} ms/step (medians)"
        print(f"round {r + 1}: {steps}   ratio {ratios['median'][-1]:.3f} (fastest steps: {ratios['fastest'][-1]:.3f})")
    for how, values in ratios.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(
            f"ratio (bare / pipeline step time, {how} steps): {statistics.mean(values):.3f} ± {spread:.3f} "
            f"over {len(values)} rounds"
        )


if __name__ == "__main__":
    main()
