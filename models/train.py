"""The training loop as a function: model + corpus + config in, losses and the new cursor out.

No I/O here: progress, logging and checkpoints reach the outside world through the
``on_step`` callback, so the same loop runs under Prefect, in a benchmark or in a notebook.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from models.data import ByteCorpus
from models.gpt import GPT


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(200, ge=0)  # 0 = evaluate only (grow and register without training)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)  # peak LR; small byte models tolerate a high one
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.1, ge=0)  # applied to matrices only, as in nanoGPT
    beta2: float = Field(0.99, gt=0, lt=1)  # 0.99 rather than 0.999: short runs need a shorter memory
    grad_clip: float = Field(1.0, gt=0)
    eval_every: int = Field(50, ge=1)
    eval_batches: int = Field(8, ge=1)  # fixed validation batches, the same for every stage
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class StepInfo:
    step: int  # 1-based, within this call
    steps: int
    train_loss: float
    lr: float
    val_loss: float | None  # set on evaluation steps


@dataclass
class TrainResult:
    val_loss_init: float  # before the first step, on the fixed validation batches
    val_loss: float  # after the last step
    cursor: int  # where the next stage's data stream starts
    train_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    val_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, loss), step 0 = init
    tokens: int = 0
    seconds: float = 0.0


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Multiplier on the peak LR: linear warmup, then cosine decay to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: GPT, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2))


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: GPT, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with _autocast(device):
        losses = [model.loss(x.to(device), y.to(device)).item() for x, y in batches]
    model.train(was_training)
    return sum(losses) / len(losses)


def train(
    model: GPT,
    corpus: ByteCorpus,
    cfg: TrainConfig,
    *,
    cursor: int = 0,
    seed: int = 0,
    on_step: Callable[[StepInfo], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``cfg.steps`` steps, reading the train stream from ``cursor``."""
    seed_everything(seed)
    device = resolve_device(cfg.device)
    model.to(device).train()
    val_batches = corpus.val_batches(cfg.eval_batches, cfg.batch_size)
    optimizer = make_optimizer(model, cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg))

    val = evaluate(model, val_batches)
    result = TrainResult(val_loss_init=val, val_loss=val, cursor=cursor, val_curve=[(0, val)])
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        x, y = corpus.batch(result.cursor, cfg.batch_size)
        result.cursor += cfg.batch_size
        with _autocast(device):
            loss = model.loss(x.to(device), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        lr = schedule.get_last_lr()[0]
        optimizer.step()
        schedule.step()

        train_loss = loss.item()
        result.train_curve.append((step, train_loss))
        val_now = None
        if step % cfg.eval_every == 0 or step == cfg.steps:
            val_now = result.val_loss = evaluate(model, val_batches)
            result.val_curve.append((step, val_now))
        if on_step is not None:
            on_step(StepInfo(step, cfg.steps, train_loss, lr, val_now))
    result.tokens = cfg.steps * cfg.batch_size * corpus.context
    result.seconds = time.perf_counter() - start
    return result
