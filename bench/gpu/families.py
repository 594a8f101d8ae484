"""Every model family through one grown stage, twice: float32 eager, then the GPU recipe (bf16 autocast +
torch.compile + activation checkpointing + micro batches). Loss parity between the two, and the recipe's
tokens/s, MFU and peak memory. What bench/gpu/check.py prints; trains through models/train/loop.py only.

    figures = check_family("llama", size=GPU_SIZE, device="cuda", compile=True)

Every family reads the byte stream (vocabulary 256): no tokenizer to train, the same data for all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from models.data.bytes import ByteCorpus, DataConfig
from models.families.lookup import FAMILIES
from models.growth import grow
from models.train import speed
from models.train.loop import TrainConfig, seed_everything, train
from models.train.plan import Hooks, Start, StepInfo


@dataclass(frozen=True)
class Size:
    parent_layers: int
    child_layers: int
    d_model: int
    n_heads: int
    d_ff: int
    context: int
    batch: int
    micro: int
    parent_steps: int
    steps: int  # of the grown stage, per arm
    warm_steps: int  # first steps of the recipe arm left out of tokens/s (compilation)
    max_bytes: int


GPU_SIZE = Size(4, 8, 768, 12, 3072, 1024, 16, 8, 10, 40, 5, 20_000_000)
TINY_SIZE = Size(1, 2, 32, 2, 64, 32, 8, 4, 2, 3, 1, 100_000)
PARITY = 0.03  # relative: |val loss bf16 recipe - fp32| / fp32 on the same batches after the same steps


def config(family: str, size: Size, n_layers: int):
    """The family's model at ``size``: grouped-query attention where it has key-value heads, the byte vocabulary."""
    common = dict(n_layers=n_layers, d_model=size.d_model, n_heads=size.n_heads, d_ff=size.d_ff, context=size.context)
    extra = {"n_kv_heads": size.n_heads // 2, "vocab_size": 256}
    fields = FAMILIES[family].config.model_fields
    return FAMILIES[family].tiny(**common, **{k: v for k, v in extra.items() if k in fields})


def _train_cfg(size: Size, steps: int, device: str, **keys) -> TrainConfig:
    return TrainConfig(
        steps=steps, batch_size=size.batch, lr=1e-3, warmup_steps=2, eval_every=max(steps, 1), eval_batches=2,
        device=device, **keys,
    )  # fmt: skip


def check_family(name: str, size: Size, device: str, compile: bool) -> dict:
    """The grown stage of ``name`` in fp32 and in the recipe: losses, parity, throughput, MFU, peak memory."""
    family = FAMILIES[name]
    corpus = ByteCorpus(DataConfig(max_bytes=size.max_bytes), context=size.context, seed=0)
    parent_cfg, child_cfg = config(name, size, size.parent_layers), config(name, size, size.child_layers)
    seed_everything(0)
    parent = family.build(parent_cfg)
    train(parent, corpus, _train_cfg(size, size.parent_steps, device))
    grown = grow("stack", {k: v.cpu() for k, v in family.weights(parent).items()}, parent_cfg, child_cfg)
    del parent
    arms = {}
    recipe = {
        "precision": "bf16",
        "compile": compile,
        "activation_checkpointing": "full",
        "micro_batch_size": size.micro,
    }
    for arm, keys in (("fp32", {}), ("recipe", recipe)):
        seed_everything(0)
        model = family.build(child_cfg)
        family.load_weights(model, grown)
        times: list[float] = []
        hooks = Hooks(on_step=lambda info, times=times: _timed(info, times))
        if device == "cuda":
            torch.cuda.empty_cache()
        result = train(model, corpus, _train_cfg(size, size.steps, device, **keys), start=Start(seed=1), hooks=hooks)
        warm = times[size.warm_steps :]
        tps = (len(warm) - 1) * size.batch * size.context / (warm[-1] - warm[0]) if len(warm) > 1 else 0.0
        flops = family.flops_per_token(child_cfg)
        peak = speed.peak_flops(torch.device(device, 0) if device == "cuda" else torch.device(device))
        arms[arm] = {
            "val_loss_init": result.val_loss_init,
            "val_loss": result.val_loss,
            "tokens_per_s": tps,
            "mfu": speed.mfu(tps, flops, peak),
            "peak_memory_bytes": result.peak_memory_bytes,
        }
        del model
    a, b = arms["fp32"]["val_loss"], arms["recipe"]["val_loss"]
    return {
        "params": family.num_params(child_cfg),
        "layers": f"{size.parent_layers} -> {size.child_layers}",
        "parity": abs(b - a) / a <= PARITY,
        "val_loss_rel_diff": abs(b - a) / a,
        **{f"{arm}_{k}": v for arm, figures in arms.items() for k, v in figures.items()},
    }


def _timed(info: StepInfo, times: list[float]) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times.append(time.perf_counter())
