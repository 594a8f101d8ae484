"""Train one arm (scratch or a staged schedule) with the project's own train() and grow(),
recording validation loss against training wall time, tokens and FLOPs.

Clock: runs while building/growing the model and inside train(); paused for every benchmark
evaluation (same fixed validation batches for every arm). train()'s own one-batch evals at the
start and end of each stage stay inside the clock; that costs under one step per stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from bench.curves import Point
from bench.spec import Preset, Schedule, stage_model, stage_train, train_flops_per_token
from models.data import ByteCorpus
from models.gpt import GPT
from models.growth import grow
from models.train import StepInfo, evaluate, resolve_device, seed_everything, train


class _Reached(Exception):
    """Raised from the step callback to stop an arm once the target is reached: the rest of the
    curve cannot change its time-to-target, and the machine is shared."""


class Clock:
    def __init__(self) -> None:
        self.seconds, self._t = 0.0, None

    def start(self) -> None:
        self._t = time.perf_counter()

    def pause(self) -> None:
        if self._t is not None:
            self.seconds += time.perf_counter() - self._t
            self._t = None


@dataclass
class ArmResult:
    schedule: str
    seed: int
    points: list[Point] = field(default_factory=list)
    boundaries: list[dict] = field(default_factory=list)  # where each stage starts: stage, n_layers, seconds, flops, tokens
    stopped_at_target: bool = False
    eval_seconds: float = 0.0

    @property
    def final_val_loss(self) -> float:
        return self.points[-1].val_loss

    def as_dict(self) -> dict:
        return {"schedule": self.schedule, "seed": self.seed, "final_val_loss": self.final_val_loss,
                "train_seconds": self.points[-1].seconds, "flops": self.points[-1].flops,
                "tokens": self.points[-1].tokens, "eval_seconds": self.eval_seconds,
                "stopped_at_target": self.stopped_at_target, "boundaries": self.boundaries,
                "points": [p.as_dict() for p in self.points]}  # fmt: skip


def _check_policies(schedule: Schedule) -> None:
    for k, plan in enumerate(schedule.stages[1:], start=2):
        if plan.optimizer != "reset" or plan.schedule != "rewarm":
            raise ValueError(
                f"schedule {schedule.name!r} stage {k}: optimizer={plan.optimizer!r}, schedule={plan.schedule!r} "
                "need the growth branch's train() policies; only reset/rewarm are available here"
            )


def run_arm(
    preset: Preset, schedule: Schedule, corpus: ByteCorpus, seed: int, *, stop_below: float | None = None
) -> ArmResult:
    """Train every stage of ``schedule`` in turn; stop once the *final* stage's val loss <= ``stop_below``
    (a smaller model that reaches the target on the way does not count: see bench.main.final_stage)."""
    _check_policies(schedule)
    if schedule.baseline:
        schedule = schedule.model_copy(update={"stages": [p.model_copy(update={"train": {**preset.scratch_train, **p.train}})
                                                          for p in schedule.stages]})  # fmt: skip
    device = resolve_device(preset.train.device)
    val = corpus.val_batches(preset.eval_batches, preset.eval_batch_size)
    arm, clock = ArmResult(schedule.name, seed), Clock()
    state, parent_cfg, cursor, step0, tokens0, flops0 = None, None, 0, 0, 0, 0.0

    def record(model: GPT, stage: int, step: int, tokens: int, flops: float) -> float:
        t = time.perf_counter()
        loss = evaluate(model, val)
        arm.eval_seconds += time.perf_counter() - t
        arm.points.append(Point(stage, step, clock.seconds, tokens, flops, loss))
        return loss

    for k, plan in enumerate(schedule.stages, start=1):
        cfg, tcfg = stage_model(preset, plan), stage_train(preset, plan)
        clock.start()
        seed_everything(seed + 1000 * k)
        model = GPT(cfg)
        if state is not None:
            model.load_state_dict(grow(plan.growth, state, parent_cfg, cfg), strict=True)
        model.to(device)
        clock.pause()
        arm.boundaries.append({"stage": k, "n_layers": cfg.n_layers, "seconds": clock.seconds, "flops": flops0, "tokens": tokens0})
        record(model, k, step0, tokens0, flops0)
        tok_step = tcfg.batch_size * cfg.context
        flops_step = train_flops_per_token(cfg) * tok_step

        def on_step(info: StepInfo, k: int = k, model: GPT = model) -> None:
            if info.step % preset.eval_every and info.step != info.steps:
                return
            clock.pause()
            loss = record(model, k, step0 + info.step, tokens0 + info.step * tok_step, flops0 + info.step * flops_step)
            if stop_below is not None and loss <= stop_below and k == len(schedule.stages):
                raise _Reached
            clock.start()

        clock.start()
        try:
            result = train(model, corpus, tcfg, cursor=cursor, seed=seed + k, on_step=on_step)
        except _Reached:
            arm.stopped_at_target = True
            return arm
        clock.pause()
        cursor, step0 = result.cursor, step0 + tcfg.steps
        tokens0, flops0 = tokens0 + tcfg.steps * tok_step, flops0 + tcfg.steps * flops_step
        state, parent_cfg = {n: t.detach().cpu() for n, t in model.state_dict().items()}, cfg
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return arm
