"""The one stage driver: from a StageSpec (and its parent) to a trained model. No Prefect, no MLflow.

    prepared = prepare(spec, parent, checkpoints)   # the newest valid checkpoint, or the parent grown
    run = train_prepared(spec, prepared, hooks=...)  # train() with the stage's plan; checkpoints on the way
    (run(spec, parent, ...) does both)

Used by the Prefect stage task (tasks/stage.py), by every torchrun rank (tasks/parallel/worker.py)
and by the benchmark (bench/runner.py): what is benchmarked is what the pipeline runs, seeded alike.
The parent's weights come in through ``Parent.load`` (the task reads them from the registry, the
benchmark from memory), called only when no checkpoint of the stage exists.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from models.data import ByteCorpus
from models.gpt import GPT, GPTConfig
from models.growth import GrowthError, grow, grow_moments
from models.optim import StateDict
from models.plan import Hooks, StagePlan, Start, TrainState, stage_plan
from models.train import NonFiniteLoss, TrainResult, seed_everything, train
from tasks.config import StageSpec
from tasks.store import CheckpointError, Storage, checkpoint


class StageFailed(RuntimeError):
    """A stage that cannot go on (NaN/Inf loss, a failed torchrun); the message is one line and says what is kept.
    ``cause`` is the error underneath (e.g. NonFiniteLoss with its step), for failure reports."""

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True)
class Parent:
    """The stage a stage grows from: where it left off, and its weights on demand."""

    n_layers: int
    data_cursor: int  # where this stage's data stream starts
    global_step: int  # steps trained by the parent and its ancestors
    load: Callable[[], tuple[GPTConfig, StateDict, StateDict | None]]  # (config, weights, Adam moments or None)
    version: str = ""  # for messages


@dataclass(frozen=True)
class Checkpoints:
    """In-stage checkpoints of one stage: where (storage, stage key), how often, how many kept."""

    storage: Storage
    key: str
    every: int
    keep: int


@dataclass
class Prepared:
    model: GPT
    plan: StagePlan
    start: Start
    seconds: float  # building, growing (weights and moments) or reading the checkpoint


@dataclass
class StageRun:
    model: GPT
    result: TrainResult
    resumed_from: int | None  # the checkpoint step this attempt started from
    prepare_seconds: float


def plan_for(spec: StageSpec, parent: Parent | None) -> StagePlan:
    t = spec.train
    return stage_plan(
        warmup=t.warmup_steps,
        min_lr_ratio=t.min_lr_ratio,
        steps=t.steps,
        schedule=spec.schedule,
        growth=spec.growth,
        until=spec.until,
        parent_layers=parent.n_layers if parent else None,
        child_layers=spec.model.n_layers,
        start=parent.global_step if parent else 0,
        total=spec.total_steps,
    )


def build(spec: StageSpec, parent: Parent | None) -> tuple[GPT, StateDict | None]:
    """Stage 1: a fresh model. Later stages: the parent's weights, grown, and with ``optimizer.state:
    transfer`` the parent's AdamW moments grown by the same operator."""
    seed_everything(spec.seed)
    model = GPT(spec.model)
    if parent is None:
        return model, None
    parent_cfg, parent_state, parent_moments = parent.load()
    model.load_state_dict(grow(spec.growth, parent_state, parent_cfg, spec.model), strict=True)
    if spec.optimizer.state == "reset":
        return model, None
    if parent_moments is None:
        raise GrowthError(f"optimizer.state transfer: parent version {parent.version} has no optimizer moments")
    return model, grow_moments(spec.growth, parent_moments, parent_cfg, spec.model)


def prepare(spec: StageSpec, parent: Parent | None, checkpoints: Checkpoints | None = None) -> Prepared:
    """The model and where training starts: from the newest valid checkpoint when there is one."""
    began = time.perf_counter()
    plan = plan_for(spec, parent)
    found = checkpoint.latest(checkpoints.storage, checkpoints.key) if checkpoints else None
    if found is not None:
        model = GPT(spec.model)
        model.load_state_dict(found.weights, strict=True)
        start = Start(seed=spec.seed + spec.index, resume=found.state)
    else:
        model, moments = build(spec, parent)
        if plan.ramp is not None:  # an evaluation before training sees the gates train() starts from
            plan.ramp.apply(model, 0)
        cursor = parent.data_cursor if parent else 0
        start = Start(cursor=cursor, seed=spec.seed + spec.index, moments=moments)
    return Prepared(model, plan, start, time.perf_counter() - began)


def _with_checkpoints(hooks: Hooks, checkpoints: Checkpoints | None, model: GPT) -> Hooks:
    if checkpoints is None or checkpoints.every == 0:
        return hooks

    def save(state: TrainState) -> None:
        checkpoint.save(checkpoints.storage, checkpoints.key, model, state)
        checkpoint.prune(checkpoints.storage, checkpoints.key, checkpoints.keep, written=state.step)
        if hooks.on_checkpoint is not None:
            hooks.on_checkpoint(state)

    return replace(hooks, on_checkpoint=save, checkpoint_every=checkpoints.every)


def train_prepared(
    spec: StageSpec,
    prepared: Prepared,
    *,
    hooks: Hooks = Hooks(),
    checkpoints: Checkpoints | None = None,
    corpus: ByteCorpus | None = None,
) -> StageRun:
    """Train the prepared model for the stage; NaN/Inf and checkpoint failures become one-line errors."""
    model, resume = prepared.model, prepared.start.resume
    corpus = corpus or ByteCorpus(spec.data, spec.model.context, spec.seed)
    try:
        result = train(
            model,
            corpus,
            spec.train,
            plan=prepared.plan,
            start=prepared.start,
            hooks=_with_checkpoints(hooks, checkpoints, model),
        )
    except NonFiniteLoss as e:
        last = checkpoint.steps(checkpoints.storage, checkpoints.key) if checkpoints else []
        kept = f"last good checkpoint: step {last[-1]}" if last else "no checkpoint was written"
        raise StageFailed(f"stage {spec.index}: {e}; stopped, {kept}", cause=e) from None
    except CheckpointError as e:
        raise CheckpointError(f"stage {spec.index}: {e}") from None
    return StageRun(model, result, resume.step if resume else None, prepared.seconds)


def run(
    spec: StageSpec,
    parent: Parent | None,
    *,
    hooks: Hooks = Hooks(),
    checkpoints: Checkpoints | None = None,
    corpus: ByteCorpus | None = None,
) -> StageRun:
    """A whole stage: prepare, then train."""
    return train_prepared(spec, prepare(spec, parent, checkpoints), hooks=hooks, checkpoints=checkpoints, corpus=corpus)
