"""Efficiency figures, each a ratio of two things measured in the same process, back to back.

- throughput: train() (data cursor, LR schedule, clipping, callback) vs a bare PyTorch loop on
  the same model, optimizer and batch size, alternated in rounds so machine noise hits both.
- MFU: train()'s model FLOPs per second over the machine's torch.mm peak measured just before.
"""

from __future__ import annotations

import statistics
import time

import torch

from bench.spec import Preset, pipeline_config, scratch_schedule, train_flops_per_token
from models.data import ByteCorpus
from models.gpt import GPT
from models.plan import Hooks, StepInfo
from models.train import TrainConfig, make_optimizer, resolve_device, seed_everything, train


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(n: int, dtype: str, device: torch.device, reps: int = 5) -> float:
    """FLOP/s of torch.mm on two n x n matrices: the roof that MFU is measured against."""
    dt = getattr(torch, dtype)
    a, b = (torch.randn(n, n, device=device).to(dt) for _ in range(2))
    for _ in range(2):
        torch.mm(a, b)
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def _train_step_seconds(model: GPT, corpus: ByteCorpus, cfg: TrainConfig) -> float:
    """Steady-state seconds per step inside train(): between the 1st and the (n-1)th callback,
    so setup and train()'s own evals are outside the window."""
    stamps: list[float] = []
    device = resolve_device(cfg.device)

    def on_step(info: StepInfo) -> None:
        _sync(device)
        stamps.append(time.perf_counter())

    train(model, corpus, cfg, hooks=Hooks(on_step=on_step))
    return (stamps[-2] - stamps[0]) / (len(stamps) - 2)


def _bare_step_seconds(model: GPT, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> float:
    """The reference: forward, backward, clip, AdamW step on one fixed batch; nothing else."""
    device = resolve_device(cfg.device)
    model.to(device).train()
    x, y = x.to(device), y.to(device)
    opt = make_optimizer(model, cfg)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    stamps = []
    for _ in range(cfg.steps):
        if amp is None:
            loss = model.loss(x, y)
        else:
            with amp:
                loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        _sync(device)
        stamps.append(time.perf_counter())
    return (stamps[-2] - stamps[0]) / (len(stamps) - 2)


def throughput_and_mfu(preset: Preset, corpus: ByteCorpus) -> dict:
    """Tokens/s of train() vs the bare loop on the final architecture, and train()'s MFU."""
    spec = pipeline_config(preset, scratch_schedule(preset), 0, "bench-throughput").stage_specs()[0]
    cfg = spec.model
    tcfg = spec.train.model_copy(update={"steps": preset.throughput_steps, "warmup_steps": 1})
    device = resolve_device(tcfg.device)
    peak = matmul_peak(preset.matmul_size, preset.peak_dtype, device)
    x, y = corpus.batch(0, tcfg.batch_size)
    seed_everything(0)
    model = GPT(cfg)
    in_train, bare = [], []
    for _ in range(preset.throughput_rounds):  # alternate, so drifting machine load hits both arms
        in_train.append(_train_step_seconds(model, corpus, tcfg))
        bare.append(_bare_step_seconds(model, x, y, tcfg))
    tokens_step = tcfg.batch_size * cfg.context
    flops_step = train_flops_per_token(cfg) * tokens_step
    t_train, t_bare = statistics.median(in_train), statistics.median(bare)
    return {
        "throughput_ratio_vs_bare_loop": t_bare / t_train,
        "train_tokens_per_s": tokens_step / t_train,
        "bare_tokens_per_s": tokens_step / t_bare,
        "mfu": flops_step / t_train / peak,
        "mfu_bare_loop": flops_step / t_bare / peak,
        "peak_flops": peak,
        "peak_dtype": preset.peak_dtype,
        "matmul_size": preset.matmul_size,
        "model_flops_per_step": flops_step,
        "samples_s_per_step": {"train": in_train, "bare": bare},
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
