"""Efficiency figures, each a ratio of two things measured in the same process, back to back.

- throughput: tokens/s of train() (the pipeline's loop: data cursor, LR plan, clipping, the NaN check's
  per-step ``.item()``, hooks) against an independent bare loop that shares nothing with it but torch and
  the model (built by its family, models/families/lookup.py: the byte GPT class, or the transformers classes):
  its own AdamW and weight-decay groups, its own loss, on a fixed batch of random tokens, timed over whole
  steps with one synchronisation at the end.
  The two alternate in rounds (ABBA order, so a drifting machine load hits both alike); the figure is the
  median of the per-round ratios, reported with their min and max.
- MFU: model FLOPs/s (the family's ``flops_per_token``) over the machine's torch.mm peak, measured
  just before in the dtype the preset trains in (float32 on CPU, bfloat16 on GPU).
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from bench.suite.runner import Corpus
from bench.suite.spec import Preset
from models.families.lookup import ModelConfig, family_of
from models.train.loop import TrainConfig, resolve_device, seed_everything, train
from models.train.plan import Hooks, StepInfo


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(n: int, dtype: str, device: torch.device, reps: int = 10) -> float:
    """FLOP/s of torch.mm on two n x n matrices (best of ``reps``): the roof that MFU is measured against."""
    dt = getattr(torch, dtype)
    a, b = (torch.randn(n, n, device=device).to(dt) for _ in range(2))
    for _ in range(3):
        torch.mm(a, b)
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def train_step_seconds(cfg: ModelConfig, corpus: Corpus, tcfg: TrainConfig) -> float:
    """Steady-state seconds per step inside train(): between the 1st and the (n-1)th callback,
    so setup and train()'s own evals are outside the window."""
    stamps: list[float] = []
    device = resolve_device(tcfg.device)

    def on_step(info: StepInfo) -> None:
        _sync(device)
        stamps.append(time.perf_counter())

    seed_everything(0)
    train(family_of(cfg).build(cfg), corpus, tcfg, hooks=Hooks(on_step=on_step))
    return (stamps[-2] - stamps[0]) / (len(stamps) - 2)


def bare_model(cfg: ModelConfig) -> nn.Module:
    """The reference loop's model: its family's own (the byte GPT class, or transformers' model class)."""
    return family_of(cfg).build(cfg)


def bare_step_seconds(
    cfg: ModelConfig,
    device: torch.device,
    *,
    batch: int,
    lr: float,
    weight_decay: float,
    beta2: float,
    clip: float,
    steps: int,
) -> float:
    """The reference: forward, cross-entropy, backward, clip, AdamW; nothing else, nothing from models.train.loop."""
    torch.manual_seed(0)
    model = bare_model(cfg).to(device).train()
    family = family_of(cfg)
    vocab = family.vocab_size(cfg)
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, beta2))
    x = torch.randint(0, vocab, (batch, cfg.context), device=device)  # (B, T)
    y = torch.randint(0, vocab, (batch, cfg.context), device=device)  # (B, T)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def step() -> None:
        with amp:
            logits = family.logits(model, x)  # (B, T, V)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()

    warm = 2
    for _ in range(warm):
        step()
    _sync(device)
    began = time.perf_counter()
    for _ in range(steps - warm):
        step()
    _sync(device)
    return (time.perf_counter() - began) / (steps - warm)


def _note(ratios: list[float]) -> str:
    med, lo, hi = statistics.median(ratios), min(ratios), max(ratios)
    if med <= 1.0:
        return f"train() runs at {med:.3f} of the bare loop's speed (rounds {lo:.3f}-{hi:.3f})"
    if lo <= 1.0:
        return f"median above 1 ({med:.3f}) but rounds span {lo:.3f}-{hi:.3f}: round-to-round noise, not a speed-up"
    return (
        f"every round above 1 ({lo:.3f}-{hi:.3f}): train() outran this bare loop here; the loops differ only in "
        "their data (train(): real tokens from the cursor; bare: one fixed random batch) and allocation order"
    )


def throughput_and_mfu(preset: Preset, corpus: Corpus) -> dict:
    """Tokens/s of train() vs the independent bare loop on the final architecture, and both MFUs."""
    cfg, t = preset.model, preset.train
    tcfg = t.model_copy(update={"steps": preset.throughput_steps, "warmup_steps": 1, "eval_every": 10**6})
    tcfg = tcfg.model_copy(update={"eval_batches": 1})
    device = resolve_device(t.device)
    peak = matmul_peak(preset.matmul_size, preset.peak_dtype, device)
    bare_kw = dict(batch=t.batch_size, lr=t.lr, weight_decay=t.weight_decay, beta2=t.beta2, clip=t.grad_clip)
    in_train, bare = [], []
    for r in range(preset.throughput_rounds):  # ABBA: which loop goes first alternates
        pair = [
            lambda: in_train.append(train_step_seconds(cfg, corpus, tcfg)),
            lambda: bare.append(bare_step_seconds(cfg, device, steps=preset.throughput_steps, **bare_kw)),
        ]
        for run in pair if r % 2 == 0 else pair[::-1]:
            run()
    ratios = [b / a for a, b in zip(in_train, bare)]
    tokens_step = t.batch_size * cfg.context
    flops_step = family_of(cfg).flops_per_token(cfg) * tokens_step
    t_train, t_bare = statistics.median(in_train), statistics.median(bare)
    return {
        "throughput_ratio_vs_bare_loop": statistics.median(ratios),
        "ratio_per_round": ratios,
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "note": _note(ratios),
        "train_tokens_per_s": tokens_step / t_train,
        "bare_tokens_per_s": tokens_step / t_bare,
        "mfu": flops_step / t_train / peak,
        "mfu_bare_loop": flops_step / t_bare / peak,
        "peak_flops": peak,
        "peak_dtype": preset.peak_dtype,
        "matmul_size": preset.matmul_size,
        "model_flops_per_step": flops_step,
        "seconds_per_step": {"train": in_train, "bare": bare},
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
