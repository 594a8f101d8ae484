"""The training loop as a function: model + corpus + config in, losses and the new cursor out.

    train(model, corpus, cfg, plan=StagePlan(...), start=Start(...), hooks=Hooks(...)) -> TrainResult

No I/O here: progress and checkpoints go out through ``hooks`` (models/train/plan.py). ``Start(resume=TrainState)``
continues a stage bit for bit: same batches (cursor), optimizer state, step-based LR and RNG. The step's tools
(micro batches, bf16 autocast, activation checkpointing, compile, frozen blocks) are models/train/step.py's.

Under ``torchrun`` (an initialized torch.distributed process group of more than one process) a
replicated model is wrapped in DistributedDataParallel, and a model sharded beforehand with FSDP2
(models/train/parallel.py) runs as it is: each rank trains on its contiguous slice of every global batch
(``cfg.batch_size`` stays the global batch, so the cursor moves as in one process), the reported
train loss is the mean over ranks. Validation runs on rank 0 and is broadcast under DDP, on every
rank under FSDP (a sharded forward needs them all): every rank takes the same stop decision. The
progress callback runs on rank 0; the checkpoint callback on rank 0, or on every rank when sharded
(each writes its shards). Every rank is seeded alike: rank 0's RNG state in a checkpoint is every rank's.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from models.data.bytes import ByteCorpus
from models.families.family import token_loss
from models.families.lookup import family_of
from models.train import parallel, speed
from models.train import step as steps
from models.train.optim import StateDict, set_lr
from models.train.optim import make_optimizer as _adamw
from models.train.parallel import export_moments, load_moments
from models.train.plan import Hooks, StagePlan, Start, StepInfo, TrainState, default_lr
from models.train.policy import MAX_STEPS

log = logging.getLogger(__name__)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(200, ge=0, le=MAX_STEPS)  # 0 = evaluate only (grow and register without training)
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
    # gradient accumulation (models/train/step.py): sequences per forward/backward on each rank; batch_size stays the
    # global batch of one optimizer step, split across ranks, then into micro batches. None: one micro batch
    micro_batch_size: int | None = Field(None, ge=1)
    activation_checkpointing: Literal["none", "full"] = "none"  # full: recompute each block in backward
    compile: bool = False  # torch.compile the model (a ~30 s first step on CPU); eager when no compiler is here
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast (float32 master weights and AdamW)

    @model_validator(mode="after")
    def _micro_divides_batch(self) -> TrainConfig:
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(f"micro_batch_size {self.micro_batch_size} does not divide batch_size {self.batch_size}")
        return self


@dataclass
class TrainResult:
    val_loss_init: float  # before the first step, on the fixed validation batches
    val_loss: float  # after the last step
    cursor: int  # where the next stage's data stream starts
    train_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    val_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, loss), step 0 = init
    tokens: int = 0
    seconds: float = 0.0  # the loop's wall time, hooks included
    hook_seconds: float = 0.0  # of which inside the hooks (progress, checkpoints): not training
    steps: int = 0  # steps actually trained (a stop rule may end the stage before cfg.steps)
    moments: StateDict = field(default_factory=dict)  # AdamW state at the end (models.train.optim layout)
    world_size: int = 1  # processes that trained it (DistributedDataParallel under torchrun)
    tokens_per_s: float = 0.0  # trained tokens over the loop's time less the hooks', all ranks together
    mfu: float = 0.0  # model FLOPs utilisation against the device's peak (models/train/speed.py)
    peak_memory_bytes: int = 0  # rank 0's: CUDA max_memory_allocated, CPU max RSS


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or Inf; raised before the optimizer step, so the weights are still finite."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"loss is {loss} at step {step}")
        self.step = step


def rng_state() -> dict[str, object]:
    """The generators a step may read (dropout, anything seeded by seed_everything)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, object]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device(device)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool = False, plan: StagePlan = StagePlan()):
    new_blocks = plan.new_warmup.blocks if plan.new_warmup else ()  # their LR ramps in on its own
    return _adamw(model, cfg.lr, cfg.weight_decay, cfg.beta2, fused=fused, new_blocks=new_blocks)


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], precision: str = "fp32") -> float:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    family = family_of(model)
    with steps.autocast(device, precision):
        losses = [token_loss(family.logits(model, x.to(device)), y.to(device)).item() for x, y in batches]
    model.train(was_training)
    return sum(losses) / len(losses)


def _evaluate_on_rank0(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], rank: int, world: int, precision: str
) -> float:
    """Rank 0 evaluates, every rank gets its figure: the same stop decision everywhere. A sharded model
    evaluates on every rank (its forward pass all-gathers each block from all of them)."""
    if world == 1 or parallel.is_sharded(model):
        return parallel.evaluated(model, evaluate(model, batches, precision))
    device = next(model.parameters()).device
    value = torch.tensor(
        [evaluate(model, batches, precision) if rank == 0 else 0.0], dtype=torch.float64, device=device
    )
    dist.broadcast(value, src=0)
    return value.item()


def _mean_over_ranks(loss: torch.Tensor, world: int) -> float:
    """The global batch's loss: each rank's slice has the same number of tokens, so the mean of means."""
    if world == 1:
        return loss.item()
    total = loss.detach().float().clone()
    dist.all_reduce(total)  # SUM: gloo has no AVG
    return total.item() / world


def train(
    model: nn.Module,
    corpus: ByteCorpus,
    cfg: TrainConfig,
    *,
    plan: StagePlan = StagePlan(),
    start: Start = Start(),
    hooks: Hooks = Hooks(),
) -> TrainResult:
    """Train ``model`` in place for up to ``cfg.steps`` steps, reading the train stream from ``start.cursor``.

    ``plan``: LR multiplier, masked growth's gate ramp (folded into the weights at the end, so the
    model is plain), the blocks that train (None: all), stop rule. ``start``: cursor, seed, transferred
    Adam moments, or a TrainState to resume from. ``hooks``: progress and checkpoint callbacks (rank 0
    only under torchrun). Raises NonFiniteLoss (before stepping the optimizer) when the loss is NaN or Inf.
    """
    seed_everything(start.seed)
    family = family_of(model)
    device = resolve_device(cfg.device)
    model.to(device).train()
    speed.reset_peak_memory(device)
    with (
        steps.frozen(model, family, plan.trainable),
        steps.checkpointed(model, family, cfg.activation_checkpointing),
    ):
        net = parallel.data_parallel(model, device)  # runs the forward pass: DDP all-reduces gradients, FSDP2 shards
        net = steps.compiled(net, cfg.compile, device, log.warning)
        result = _loop(model, net, corpus, cfg, plan, start, hooks, device)
    family.fold_gates(model)  # a no-op unless a ramp was still below 1
    return result


def _loop(model, net, corpus, cfg: TrainConfig, plan: StagePlan, start: Start, hooks: Hooks, device) -> TrainResult:
    family = family_of(model)
    rank, world = rank_and_world()
    on_step = hooks.on_step if rank == 0 else None
    on_checkpoint = hooks.on_checkpoint if rank == 0 or parallel.is_sharded(model) else None
    val_batches = corpus.val_batches(cfg.eval_batches, cfg.batch_size)
    optimizer = make_optimizer(model, cfg, fused=device.type == "cuda", plan=plan)
    mult = plan.lr_mult or default_lr(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    ramp, resume = plan.ramp, start.resume
    if resume is not None:
        load_moments(model, optimizer, resume.moments)
        set_rng_state(resume.rng)
        result = TrainResult(
            val_loss_init=resume.val_loss_init,
            val_loss=resume.val_loss,
            cursor=resume.cursor,
            steps=resume.step,
            train_curve=list(resume.train_curve),
            val_curve=list(resume.val_curve),
        )
        first = resume.step + 1
        stopped = result.val_curve[-1][0] == resume.step > 0 and plan.stop(result.val_curve)
    else:
        if start.moments is not None:
            load_moments(model, optimizer, start.moments)
        if ramp is not None:
            ramp.apply(model, 0)
        val = _evaluate_on_rank0(model, val_batches, rank, world, cfg.precision)
        result = TrainResult(val_loss_init=val, val_loss=val, cursor=start.cursor, val_curve=[(0, val)])
        first, stopped = 1, False
    began = time.perf_counter()
    for step in range(first, cfg.steps + 1 if not stopped else first):
        if ramp is not None:
            ramp.apply(model, step)
        x, y = corpus.batch(result.cursor, cfg.batch_size, rank, world)  # this rank's slice of the global batch
        result.cursor += cfg.batch_size
        optimizer.zero_grad(set_to_none=True)
        loss = steps.accumulate(net, model, family, x.to(device), y.to(device), cfg.micro_batch_size, cfg.precision)
        train_loss = _mean_over_ranks(loss, world)
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(step, train_loss)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], cfg.grad_clip)
        lr = cfg.lr * mult(step - 1)  # what LambdaLR computed: a function of the step, nothing to save
        set_lr(optimizer, lr, plan.new_warmup.mult(step - 1) if plan.new_warmup else 1.0)
        optimizer.step()

        result.train_curve.append((step, train_loss))
        result.steps = step
        val_now = None
        if step % cfg.eval_every == 0 or step == cfg.steps:
            val_now = result.val_loss = _evaluate_on_rank0(model, val_batches, rank, world, cfg.precision)
            result.val_curve.append((step, val_now))
        hooked = time.perf_counter()
        if on_step is not None:
            elapsed = hooked - began - result.hook_seconds
            tokens_per_s = (step - first + 1) * cfg.batch_size * corpus.context / max(elapsed, 1e-9)
            on_step(StepInfo(step, cfg.steps, train_loss, lr, val_now, tokens_per_s))
        stopping = val_now is not None and plan.stop(result.val_curve)
        every = hooks.checkpoint_every
        if on_checkpoint is not None and every > 0 and (step % every == 0 or step == cfg.steps or stopping):
            on_checkpoint(snapshot(model, optimizer, result))
        result.hook_seconds += time.perf_counter() - hooked
        if stopping:
            break
    result.moments = export_moments(model, optimizer)
    result.world_size = world
    result.tokens = (result.steps - first + 1) * cfg.batch_size * corpus.context
    result.seconds = time.perf_counter() - began
    result.tokens_per_s = result.tokens / max(result.seconds - result.hook_seconds, 1e-9)  # hooks excluded
    flops = family.flops_per_token(model.cfg) if result.tokens else 0.0
    result.mfu = speed.mfu(result.tokens_per_s, flops, speed.peak_flops(device) if flops else 1.0, world)
    result.peak_memory_bytes = speed.peak_memory_bytes(device)
    return result


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer, result: TrainResult) -> TrainState:
    """The state after ``result.steps`` steps, copied so that training on does not change it (moments:
    each rank's shards when the model is sharded)."""
    return TrainState(
        step=result.steps,
        cursor=result.cursor,
        moments=export_moments(model, optimizer, full=False),
        rng=rng_state(),
        val_loss_init=result.val_loss_init,
        val_loss=result.val_loss,
        train_curve=list(result.train_curve),
        val_curve=list(result.val_curve),
    )
