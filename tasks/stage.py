"""The stage task: load the parent version, grow it, train it, register the result.

    run_stage(spec, parent, store) -> StageResult

Idempotent: a stage whose ``stage_key`` (config + parent weights + code) is already registered
is returned as is, never retrained or registered twice. Resumable: every ``checkpoint_every``
steps a checkpoint goes to storage under the stage key (tasks/checkpoint.py); a retried or
rerun stage continues from the newest valid one and ends with the same weights, bit for bit.
With ``nproc`` > 1 the training runs under torchrun (tasks/ddp.py); this process still registers.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import time
from pathlib import Path

import torch
from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_run_logger
from pydantic import BaseModel
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import models
from models.data import ByteCorpus
from models.gpt import GPT, GPTConfig
from models.growth import GrowthError, grow, grow_moments
from models.optim import StateDict
from models.stage_policies import train_policies as stage_policies
from models.train import NonFiniteLoss, StepInfo, TrainResult, TrainState, seed_everything, train
from tasks import checkpoint
from tasks.config import StageSpec
from tasks.ddp import DDPJob, TorchrunFailed, launch
from tasks.monitor import StageWatch, artifact_key
from tasks.registry import (
    ModelRef,
    Pipeline,
    Store,
    download_with_optimizer,
    finalize,
    find_version,
    metric_history,
    register,
)
from tasks.serving import add_pyfunc
from tasks.storage import Storage, open_storage
from tasks.weights import OPTIMIZER, save_model, save_optimizer


class StageResult(BaseModel):
    ref: ModelRef
    params: int
    steps: int
    val_loss_init: float
    val_loss: float
    seconds: float
    skipped: bool  # found already registered: nothing was trained
    train_curve: list[tuple[int, float]]  # (global step, loss)
    val_curve: list[tuple[int, float]]
    resumed_from: int | None = None  # the checkpoint step this attempt started from
    tokens: int = 0  # trained on in this stage
    tokens_per_s: float | None = None  # training throughput of the attempt that finished the stage


def code_version() -> str:
    """Hash of the model code: a change to how weights are computed changes every stage key."""
    h = hashlib.sha256()
    for path in sorted(Path(models.__file__).parent.glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def stage_key(spec: StageSpec, parent: ModelRef | None) -> str:
    parts = [spec.content_hash(), parent.weights_sha256 if parent else "", code_version()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def build_model(spec: StageSpec, parent: ModelRef | None, store: Store) -> tuple[GPT, StateDict | None]:
    """Stage 1: a fresh model. Later stages: the parent's verified weights, grown, and with
    ``optimizer.state: transfer`` the parent's AdamW moments grown by the same operator."""
    seed_everything(spec.seed)
    model = GPT(spec.model)
    if parent is None:
        return model, None
    with tempfile.TemporaryDirectory(prefix="staged-parent-") as tmp:
        parent_cfg, parent_state, parent_moments = download_with_optimizer(store, parent, Path(tmp))
    model.load_state_dict(grow(spec.growth, parent_state, parent_cfg, spec.model), strict=True)
    if spec.optimizer.state == "reset":
        return model, None
    if parent_moments is None:
        raise GrowthError(f"optimizer.state transfer: parent version {parent.version} has no {OPTIMIZER}")
    return model, grow_moments(spec.growth, parent_moments, parent_cfg, spec.model)


def train_policies(spec: StageSpec, parent: ModelRef | None) -> dict:
    """train()'s keyword arguments for this stage's LR, gate-ramp and stop policies."""
    return stage_policies(
        spec.train,
        spec.schedule,
        spec.growth,
        spec.until,
        parent_layers=parent.n_layers if parent else None,
        child_layers=spec.model.n_layers,
        start=parent.global_step if parent else 0,
        total=spec.total_steps,
    )


class _Progress:
    """A terminal progress bar and a Prefect progress artifact for one stage. The bar appears at the
    first step reported: a resumed stage's bar starts at its checkpoint."""

    def __init__(self, spec: StageSpec):
        self.bar = Progress(
            TextColumn(f"stage {spec.index} ({spec.model.n_layers}L)"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps  loss {task.fields[loss]:.3f}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.task = None
        self.every = max(1, spec.train.steps // 20)  # artifact updates: ~5% apart
        self.artifact = create_progress_artifact(
            progress=0.0,
            key=f"{artifact_key(spec.model_name)}-stage-{spec.index}",
            description=f"Training stage {spec.index} ({spec.model.n_layers} layers)",
        )

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def __call__(self, info: StepInfo) -> None:
        if self.task is None:
            self.task = self.bar.add_task("train", total=info.steps, completed=info.step - 1, loss=float("nan"))
            self.bar.start()
        self.bar.update(self.task, completed=info.step, loss=info.train_loss)
        if info.step % self.every == 0 or info.step == info.steps:
            update_progress_artifact(self.artifact, progress=100.0 * info.step / info.steps)


def _shift(curve: list[tuple[int, float]], offset: int) -> list[tuple[int, float]]:
    """Stage-local steps -> steps counted across all stages."""
    return [(offset + step, value) for step, value in curve]


def skipped_result(ref: ModelRef, store: Store, model: GPTConfig) -> StageResult:
    """Rebuild a registered stage's result from the registry."""
    with torch.device("meta"):
        params = GPT(model).num_params()
    run = store.client().get_run(ref.run_id)
    steps = int(run.data.params["steps"])
    offset = ref.global_step - steps
    val = metric_history(store, ref.run_id, "val_loss")
    init = metric_history(store, ref.run_id, "val_loss_init")
    return StageResult(
        ref=ref,
        params=params,
        steps=steps,
        val_loss_init=init[0][1],
        val_loss=val[-1][1],
        seconds=0.0,
        skipped=True,
        tokens=steps * int(run.data.params["train.batch_size"]) * model.context,
        tokens_per_s=run.data.metrics.get("tokens_per_s"),
        train_curve=_shift(metric_history(store, ref.run_id, "train_loss"), offset),
        val_curve=_shift(val, offset),
    )


class StageFailed(RuntimeError):
    """A stage that cannot go on (NaN/Inf loss, a failed torchrun); the message is one line and says what is kept."""


def _resume_or_build(spec: StageSpec, parent: ModelRef | None, store: Store, storage: Storage, key: str):
    """(model, transferred moments, TrainState or None): from the newest valid checkpoint when there is one."""
    found = checkpoint.latest(storage, key)
    if found is None:
        model, moments = build_model(spec, parent, store)
        return model, moments, None
    model = GPT(spec.model)
    model.load_state_dict(found.weights, strict=True)
    return model, None, found.state


def _checkpointer(spec: StageSpec, storage: Storage, key: str, model: GPT):
    def save(state: TrainState) -> None:
        checkpoint.save(storage, key, model, state)
        checkpoint.prune(storage, key, spec.checkpoint_keep)

    return save


def _phase(watch: StageWatch | None, phase: str):
    """The watch's failure report for ``phase``; nothing in a torchrun rank, which has no watch."""
    return watch.during(phase) if watch is not None else contextlib.nullcontext()


def train_stage(
    spec: StageSpec,
    parent: ModelRef | None,
    store: Store,
    key: str,
    *,
    log,
    on_step=None,
    watch: StageWatch | None = None,
    corpus: ByteCorpus | None = None,
):
    """Build (or resume) the stage's model and train it: (model, TrainResult, checkpoint step resumed
    from or None). What run_stage does in its own process (with its ``watch``), and what every
    torchrun rank does (without: the ranks never talk to Prefect or MLflow)."""
    storage = open_storage(store.checkpoints, store.max_attempts)
    with _phase(watch, "loading and growing the parent"):
        model, moments, resume = _resume_or_build(spec, parent, store, storage, key)
    if resume is not None:
        log.info("stage %d: resuming from checkpoint step %d of %d", spec.index, resume.step, spec.train.steps)
    corpus = corpus or ByteCorpus(spec.data, spec.model.context, spec.seed)
    try:
        with _phase(watch, "training"):
            result = train(
                model,
                corpus,
                spec.train,
                cursor=parent.data_cursor if parent else 0,
                seed=spec.seed + spec.index,
                on_step=on_step,
                moments=moments,
                resume=resume,
                checkpoint_every=spec.checkpoint_every,
                on_checkpoint=_checkpointer(spec, storage, key, model),
                **train_policies(spec, parent),
            )
    except NonFiniteLoss as e:
        last = checkpoint.steps(storage, key)
        kept = f"last good checkpoint: step {last[-1]}" if last else "no checkpoint was written"
        raise StageFailed(f"stage {spec.index}: {e}; stopped, {kept}") from None
    except checkpoint.CheckpointError as e:
        raise checkpoint.CheckpointError(f"stage {spec.index}: {e}") from None
    return model, result, resume.step if resume else None


def _register_trained(
    spec: StageSpec,
    parent: ModelRef | None,
    store: Store,
    key: str,
    model: GPT,
    result: TrainResult,
    watch: StageWatch,
    corpus: ByteCorpus,
) -> ModelRef:
    """Register the trained model with its lineage tags, parameters, loss curves and run extras."""
    offset, steps = parent.global_step if parent else 0, result.steps  # a loss-slope rule may end the stage early
    with watch.during("registering"), tempfile.TemporaryDirectory(prefix="staged-model-") as tmp:
        sha = save_model(model, Path(tmp))
        optimizer_sha = save_optimizer(result.moments, Path(tmp))
        add_pyfunc(Path(tmp), spec.model.context)  # the same directory is also an MLflow pyfunc model
        tags = {
            "stage": str(spec.index),
            "n_layers": str(spec.model.n_layers),
            "parent_version": parent.version if parent else "",
            "weights_sha256": sha,
            "stage_key": key,
            "growth": spec.growth.operator if parent else "none",
            "data_cursor": str(result.cursor),
            "global_step": str(offset + steps),
            "config_hash": spec.content_hash()[:16],
            "optimizer_sha256": optimizer_sha,
            "code_version": code_version(),
            "val_loss": f"{result.val_loss:.6f}",
        }
        params = {
            "steps": steps,
            "params": model.num_params(),
            "nproc": result.world_size,
            **spec.model.model_dump(),
            **{f"train.{k}": v for k, v in spec.train.model_dump().items()},
        }
        metrics = {
            "train_loss": result.train_curve,
            "val_loss": result.val_curve,
            "val_loss_init": [(0, result.val_loss_init)],
            "tokens_per_s": [(steps, result.tokens / max(result.seconds, 1e-9))],
            "step_time_s": watch.step_times,
        }
        extras = watch.extras(corpus, parent.data_cursor if parent else 0, result.cursor)
        return register(store, spec, model_dir=Path(tmp), tags=tags, params=params, metrics=metrics, extras=extras)


@task(name="run-stage", task_run_name="stage-{spec.index}-{spec.model.n_layers}L")
def run_stage(spec: StageSpec, parent: ModelRef | None, store: Store, pipeline: Pipeline | None = None) -> StageResult:
    log = get_run_logger()
    key = stage_key(spec, parent)
    if (existing := find_version(store.client(), spec.model_name, key)) is not None:
        log.info("stage %d already registered as version %s: skipping", spec.index, existing.version)
        finalize(store, existing)
        return skipped_result(existing, store, spec.model)

    start = time.perf_counter()
    storage = open_storage(store.checkpoints, store.max_attempts)
    watch = StageWatch(spec, store, pipeline, storage, key, parent)  # MLflow parent run, step times, failure report
    corpus = ByteCorpus(spec.data, spec.model.context, spec.seed)
    with _Progress(spec) as progress:
        if spec.nproc == 1:
            model, result, resumed_from = train_stage(
                spec, parent, store, key, log=log, on_step=watch.observe(progress), watch=watch, corpus=corpus
            )
        else:
            try:
                with watch.during("training under torchrun"):
                    job = DDPJob(spec=spec, parent=parent, store=store, key=key)
                    model, result, resumed_from = launch(job, watch.observe(progress), log)
            except TorchrunFailed as e:
                raise StageFailed(str(e)) from None
            resumed = f", resumed from checkpoint step {resumed_from}" if resumed_from is not None else ""
            log.info("stage %d: trained by %d processes under torchrun%s", spec.index, spec.nproc, resumed)
    init, val, steps = result.val_loss_init, result.val_loss, result.steps
    log.info("stage %d: val loss %.4f -> %.4f in %d steps", spec.index, init, val, steps)
    ref = _register_trained(spec, parent, store, key, model, result, watch, corpus)
    log.info("stage %d registered as %s version %s", spec.index, ref.name, ref.version)
    offset, cursor = (parent.global_step, parent.data_cursor) if parent else (0, 0)
    done = StageResult(
        ref=ref,
        params=model.num_params(),
        steps=result.steps,
        val_loss_init=result.val_loss_init,
        val_loss=result.val_loss,
        seconds=time.perf_counter() - start,
        skipped=False,
        train_curve=_shift(result.train_curve, offset),
        val_curve=_shift(result.val_curve, offset),
        resumed_from=resumed_from,
        tokens=(result.cursor - cursor) * spec.model.context,
        tokens_per_s=result.tokens / max(result.seconds, 1e-9),
    )
    watch.publish(done)
    return done
