"""The stage task: load the parent version, grow it, train it, register the result.

    run_stage(spec, parent, store) -> StageResult

Idempotent: a stage whose ``stage_key`` (config + parent weights + code) is already registered
is returned as is, never retrained or registered twice.
"""

from __future__ import annotations

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
from models.gpt import GPT
from models.growth import grow
from models.train import StepInfo, seed_everything, train
from tasks.config import StageSpec
from tasks.registry import ModelRef, Store, download, find_version, metric_history, register
from tasks.weights import save_model


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


def code_version() -> str:
    """Hash of the model code: a change to how weights are computed changes every stage key."""
    h = hashlib.sha256()
    for path in sorted(Path(models.__file__).parent.glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def stage_key(spec: StageSpec, parent: ModelRef | None) -> str:
    parts = [spec.content_hash(), parent.weights_sha256 if parent else "", code_version()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def build_model(spec: StageSpec, parent: ModelRef | None, store: Store) -> GPT:
    """Stage 1: a fresh model. Later stages: the parent's verified weights, grown."""
    seed_everything(spec.seed)
    model = GPT(spec.model)
    if parent is not None:
        with tempfile.TemporaryDirectory(prefix="staged-parent-") as tmp:
            parent_cfg, parent_state = download(store, parent, Path(tmp))
        model.load_state_dict(grow(spec.growth.operator, parent_state, parent_cfg, spec.model), strict=True)
    return model


class _Progress:
    """A terminal progress bar and a Prefect progress artifact for one stage."""

    def __init__(self, spec: StageSpec):
        self.bar = Progress(
            TextColumn(f"stage {spec.index} ({spec.model.n_layers}L)"), BarColumn(),
            TextColumn("{task.completed}/{task.total} steps  loss {task.fields[loss]:.3f}"),
            TimeElapsedColumn(), TimeRemainingColumn(),
        )  # fmt: skip
        self.task = self.bar.add_task("train", total=spec.train.steps, loss=float("nan"))
        self.every = max(1, spec.train.steps // 20)  # artifact updates: ~5% apart
        self.artifact = create_progress_artifact(
            progress=0.0, key=f"{spec.model_name.lower().replace('_', '-').replace('.', '-')}-stage-{spec.index}",
            description=f"Training stage {spec.index} ({spec.model.n_layers} layers)",
        )  # fmt: skip

    def __call__(self, info: StepInfo) -> None:
        self.bar.update(self.task, completed=info.step, loss=info.train_loss)
        if info.step % self.every == 0 or info.step == info.steps:
            update_progress_artifact(self.artifact, progress=100.0 * info.step / info.steps)


def _skipped(ref: ModelRef, store: Store, params: int) -> StageResult:
    """Rebuild a registered stage's result from the registry."""
    offset = ref.global_step - int(store.client().get_run(ref.run_id).data.params["steps"])
    shift = lambda curve: [(offset + s, v) for s, v in curve]  # noqa: E731
    val = metric_history(store, ref.run_id, "val_loss")
    init = metric_history(store, ref.run_id, "val_loss_init")
    return StageResult(
        ref=ref, params=params, steps=ref.global_step - offset, val_loss_init=init[0][1], val_loss=val[-1][1],
        seconds=0.0, skipped=True, train_curve=shift(metric_history(store, ref.run_id, "train_loss")), val_curve=shift(val),
    )  # fmt: skip


@task(name="run-stage", task_run_name="stage-{spec.index}-{spec.model.n_layers}L")
def run_stage(spec: StageSpec, parent: ModelRef | None, store: Store) -> StageResult:
    log = get_run_logger()
    key = stage_key(spec, parent)
    if (existing := find_version(store.client(), spec.model_name, key)) is not None:
        log.info("stage %d already registered as version %s: skipping", spec.index, existing.version)
        with torch.device("meta"):
            params = GPT(spec.model).num_params()
        return _skipped(existing, store, params)

    start = time.perf_counter()
    model = build_model(spec, parent, store)
    corpus = ByteCorpus(spec.data, spec.model.context, spec.seed)
    cursor, offset = (parent.data_cursor, parent.global_step) if parent else (0, 0)
    progress = _Progress(spec)
    with progress.bar:
        result = train(model, corpus, spec.train, cursor=cursor, seed=spec.seed + spec.index, on_step=progress)
    log.info("stage %d: val loss %.4f -> %.4f in %d steps", spec.index, result.val_loss_init, result.val_loss, spec.train.steps)

    with tempfile.TemporaryDirectory(prefix="staged-model-") as tmp:
        sha = save_model(model, Path(tmp))
        tags = {
            "stage": str(spec.index), "n_layers": str(spec.model.n_layers),
            "parent_version": parent.version if parent else "", "weights_sha256": sha, "stage_key": key,
            "growth": spec.growth.operator if parent else "none", "data_cursor": str(result.cursor),
            "global_step": str(offset + spec.train.steps), "config_hash": spec.content_hash()[:16],
            "code_version": code_version(), "val_loss": f"{result.val_loss:.6f}",
        }  # fmt: skip
        params = {"steps": spec.train.steps, "params": model.num_params(), **spec.model.model_dump(),
                  **{f"train.{k}": v for k, v in spec.train.model_dump().items()}}  # fmt: skip
        metrics = {
            "train_loss": result.train_curve, "val_loss": result.val_curve,
            "val_loss_init": [(0, result.val_loss_init)], "tokens_per_s": [(spec.train.steps, result.tokens / max(result.seconds, 1e-9))],
        }  # fmt: skip
        ref = register(store, spec, model_dir=Path(tmp), tags=tags, params=params, metrics=metrics)
    log.info("stage %d registered as %s version %s", spec.index, ref.name, ref.version)
    shift = lambda curve: [(offset + s, v) for s, v in curve]  # noqa: E731
    return StageResult(
        ref=ref, params=model.num_params(), steps=spec.train.steps, val_loss_init=result.val_loss_init,
        val_loss=result.val_loss, seconds=time.perf_counter() - start, skipped=False,
        train_curve=shift(result.train_curve), val_curve=shift(result.val_curve),
    )  # fmt: skip
