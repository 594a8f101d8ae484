"""Train one arm (scratch or a staged schedule) with the project's own train() and grow(),
recording validation loss against training wall time, tokens and FLOPs.

Every stage is grown and trained as the Prefect stage task does it: models.growth.grow (and
grow_moments for ``optimizer: transfer``), and train() with models.stage_policies.train_policies
(LR schedule across stages, masked growth's gate ramp).

Clock: runs while building/growing the model (Adam moments included) and inside train(); paused for every benchmark
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
from models.growth import grow, grow_moments
from models.policy import UntilConfig
from models.stage_policies import train_policies
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
    boundaries: list[dict] = field(
        default_factory=list
    )  # where each stage starts: stage, n_layers, seconds, flops, tokens
    stopped_at_target: bool = False
    eval_seconds: float = 0.0

    @property
    def final_val_loss(self) -> float:
        return self.points[-1].val_loss

    def as_dict(self) -> dict:
        return {
            "schedule": self.schedule,
            "seed": self.seed,
            "final_val_loss": self.final_val_loss,
            "train_seconds": self.points[-1].seconds,
            "flops": self.points[-1].flops,
            "tokens": self.points[-1].tokens,
            "eval_seconds": self.eval_seconds,
            "stopped_at_target": self.stopped_at_target,
            "boundaries": self.boundaries,
            "points": [p.as_dict() for p in self.points],
        }


def run_arm(
    preset: Preset, schedule: Schedule, corpus: ByteCorpus, seed: int, *, stop_below: float | None = None
) -> ArmResult:
    """Train every stage of ``schedule`` in turn; stop once the *final* stage's val loss <= ``stop_below``
    (a smaller model that reaches the target on the way does not count: see bench.main.final_stage)."""
    if schedule.baseline:
        schedule = schedule.model_copy(
            update={
                "stages": [p.model_copy(update={"train": {**preset.scratch_train, **p.train}}) for p in schedule.stages]
            }
        )
    device = resolve_device(preset.train.device)
    val = corpus.val_batches(preset.eval_batches, preset.eval_batch_size)
    arm, clock = ArmResult(schedule.name, seed), Clock()
    state, moments, parent_cfg, cursor, step0, tokens0, flops0 = None, None, None, 0, 0, 0, 0.0
    total = sum(stage_train(preset, p).steps for p in schedule.stages)  # what `continue` lays its LR curve over

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
            moments = grow_moments(plan.growth, moments, parent_cfg, cfg) if plan.optimizer == "transfer" else None
        policies = train_policies(
            tcfg,
            plan.schedule,
            plan.growth,
            UntilConfig(),
            start=step0,
            total=total,
            parent_layers=parent_cfg.n_layers if parent_cfg else None,
            child_layers=cfg.n_layers,
        )
        if policies["ramp"] is not None:  # the benchmark's first eval must see the gates train() starts from
            policies["ramp"].apply(model, 0)
        model.to(device)
        clock.pause()
        arm.boundaries.append(
            {"stage": k, "n_layers": cfg.n_layers, "seconds": clock.seconds, "flops": flops0, "tokens": tokens0}
        )
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
            result = train(
                model, corpus, tcfg, cursor=cursor, seed=seed + k, on_step=on_step, moments=moments, **policies
            )
        except _Reached:
            arm.stopped_at_target = True
            return arm
        clock.pause()
        cursor, step0 = result.cursor, step0 + tcfg.steps
        tokens0, flops0 = tokens0 + tcfg.steps * tok_step, flops0 + tcfg.steps * flops_step
        state, parent_cfg = {n: t.detach().cpu() for n, t in model.state_dict().items()}, cfg
        moments = result.moments
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return arm
