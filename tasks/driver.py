"""The one stage driver: from a StageSpec (and its parent) to a trained model. No Prefect, no MLflow.

    prepared = prepare(spec, parent, checkpoints)   # the newest valid checkpoint, or the parent grown
    run = train_prepared(spec, prepared, hooks=...)  # train() with the stage's plan; checkpoints on the way
    (run(spec, parent, ...) does both)

Used by the Prefect stage task (tasks/stage.py), by every torchrun rank (tasks/parallel/worker.py)
and by the benchmark (bench/suite/runner.py): what is benchmarked is what the pipeline runs, seeded alike.
The parent's weights come in through ``Parent.load`` (the task reads them from the registry, the
benchmark from memory), called only when no checkpoint of the stage exists; an imported stage 1's
through ``initial`` (the task reads a local Hugging Face directory). Any family (models/families/lookup.py).

``parallel.strategy: fsdp`` under torchrun: every rank builds (or grows) the whole model as in one
process, then shards it (models/train/parallel.py); a checkpoint, sharded or whole, loads into the shards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import nn

from models.data import tokenizer as tokenizers
from models.data.corpus import Corpus, open_corpus
from models.data.documents import read_documents, split_documents
from models.data.mixture import Origin
from models.data.tokenizer import Vocabulary
from models.errors import UserError
from models.families.lookup import ModelConfig, family_of
from models.growth import GrowthError, grow
from models.growth_moments import grow_moments
from models.train.loop import NonFiniteLoss, TrainResult, rank_and_world, resolve_device, seed_everything, train
from models.train.optim import StateDict
from models.train.parallel import load_full_state, shard
from models.train.plan import Hooks, StagePlan, Start, TrainState, stage_plan
from tasks.config import StageSpec
from tasks.store import CheckpointError, Storage, checkpoint


class StageFailed(RuntimeError):
    """A stage that cannot go on (NaN/Inf loss, a failed torchrun); the message is one line and says what is kept.
    ``cause`` is the error underneath (e.g. NonFiniteLoss with its step), for failure reports."""

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.cause = cause


class StageRefused(StageFailed, UserError):
    """A stage that failed on a user's mistake in one of its torchrun ranks: one line, never retried."""


@dataclass(frozen=True)
class Parent:
    """The stage a stage grows from: where it left off, and its weights on demand."""

    n_layers: int
    data_cursor: int  # where this stage's data stream starts
    global_step: int  # steps trained by the parent and its ancestors
    load: Callable[[], tuple[ModelConfig, StateDict, StateDict | None]]  # (config, weights, Adam moments or None)
    version: str = ""  # for messages
    data_cursors: dict[str, int] = field(default_factory=dict)  # data.sources: where each source's stream starts

    @property
    def origin(self) -> Origin:
        return Origin(self.data_cursor, dict(self.data_cursors))


@dataclass(frozen=True)
class Checkpoints:
    """In-stage checkpoints of one stage: where (storage, stage key), how often, how many kept."""

    storage: Storage
    key: str
    every: int
    keep: int


@dataclass
class Prepared:
    model: nn.Module
    plan: StagePlan
    start: Start
    seconds: float  # building, growing (weights and moments) or reading the checkpoint
    origin: Origin = Origin()  # where the stage's data starts (a mixture's sources: their own cursors)


@dataclass
class StageRun:
    model: nn.Module
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


def build(
    spec: StageSpec, parent: Parent | None, initial: Callable[[], StateDict] | None = None
) -> tuple[nn.Module, StateDict | None]:
    """Stage 1: a fresh model (or ``initial()``'s weights: an import). Later stages: the parent's weights,
    grown, and with ``optimizer.state: transfer`` the parent's AdamW moments grown by the same operator."""
    seed_everything(spec.seed)
    family = family_of(spec.model)
    if parent is None:
        return (family.build(spec.model) if initial is None else family.from_state(spec.model, initial())), None
    parent_cfg, parent_state, parent_moments = parent.load()
    model = family.from_state(spec.model, grow(spec.growth, parent_state, parent_cfg, spec.model))
    if spec.optimizer.state == "reset":
        return model, None
    if parent_moments is None:
        raise GrowthError(f"optimizer.state transfer: parent version {parent.version} has no optimizer moments")
    return model, grow_moments(spec.growth, parent_moments, parent_cfg, spec.model)


def sharded(spec: StageSpec) -> bool:
    """Whether this process trains its stage as one rank of an FSDP2 group."""
    return spec.parallel.strategy == "fsdp" and rank_and_world()[1] > 1


def prepare(
    spec: StageSpec,
    parent: Parent | None,
    checkpoints: Checkpoints | None = None,
    initial: Callable[[], StateDict] | None = None,
) -> Prepared:
    """The model and where training starts: from the newest valid checkpoint when there is one."""
    began = time.perf_counter()
    plan, family = plan_for(spec, parent), family_of(spec.model)
    device, bf16 = resolve_device(spec.train.device), spec.train.precision == "bf16"
    shards = shard(family.build(spec.model), device, bf16) if sharded(spec) else None
    found = checkpoint.latest(checkpoints.storage, checkpoints.key, into=shards) if checkpoints else None
    if found is not None:
        # the checkpoint went into the shards, or comes back whole
        model = shards if shards is not None else family.from_state(spec.model, found.weights)
        start = Start(seed=spec.seed + spec.index, resume=found.state)
    else:
        model, moments = build(spec, parent, initial)
        if shards is not None:  # the whole grown model, then each rank keeps its shards
            load_full_state(shards, model.state_dict())
            model = shards
        if plan.ramp is not None:  # an evaluation before training sees the gates train() starts from
            plan.ramp.apply(model, 0)
        cursor = parent.data_cursor if parent else 0
        start = Start(cursor=cursor, seed=spec.seed + spec.index, moments=moments)
    return Prepared(model, plan, start, time.perf_counter() - began, parent.origin if parent else Origin())


def _with_checkpoints(hooks: Hooks, checkpoints: Checkpoints | None, model: nn.Module, corpus) -> Hooks:
    if checkpoints is None or checkpoints.every == 0:
        return hooks

    def save(state: TrainState) -> None:  # on rank 0, or on every rank of a sharded model (its shards)
        state = replace(state, cursors=corpus.cursors(state.cursor))  # a mixture's, beside the global one
        checkpoint.save(checkpoints.storage, checkpoints.key, model, state)
        if rank_and_world()[0] == 0:
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
    corpus: Corpus | None = None,
    vocabulary: Vocabulary | None = None,
    cache_dir: Path | None = None,
) -> StageRun:
    """Train the prepared model for the stage (on ``corpus``, or the one its data, vocabulary and ``cache_dir``
    name); NaN/Inf and checkpoint failures become one-line errors."""
    model, resume = prepared.model, prepared.start.resume
    corpus = corpus or open_corpus(
        spec.data, spec.model.context, spec.seed, vocabulary, cache_dir, progress=False, origin=prepared.origin
    )
    if resume is not None and resume.cursors is not None:
        if (now := corpus.cursors(resume.cursor)) != resume.cursors:
            raise CheckpointError(f"stage {spec.index}: checkpoint's source cursors {resume.cursors} are not {now}")
    try:
        result = train(
            model,
            corpus,
            spec.train,
            plan=prepared.plan,
            start=prepared.start,
            hooks=_with_checkpoints(hooks, checkpoints, model, corpus),
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
    corpus: Corpus | None = None,
    vocabulary: Vocabulary | None = None,
    cache_dir: Path | None = None,
) -> StageRun:
    """A whole stage: prepare, then train."""
    prepared = prepare(spec, parent, checkpoints)
    return train_prepared(
        spec, prepared, hooks=hooks, checkpoints=checkpoints, corpus=corpus, vocabulary=vocabulary, cache_dir=cache_dir
    )


# ---- the pipeline's tokenizer ---------------------------------------------------------------------


def resolve_tokenizer(spec: StageSpec, cache_dir: Path) -> Vocabulary:
    """The tokenizer of ``spec.tokenizer`` with its sha256: the byte vocabulary, a local file, or a BPE trained
    (deterministically) on the documents of the corpus's training split only, never on its validation ones."""
    cfg = spec.tokenizer
    if cfg.kind == "bytes":
        return Vocabulary.bytes()
    if cfg.kind == "path":
        return Vocabulary.of(tokenizers.load(cfg.path))
    limit, parts, n = cfg.train.max_bytes, [], 0
    corpora = [s.corpus() for s in spec.data.sources] if spec.data.sources else [spec.data]
    for data in corpora:  # a mixture's sources in order, bytes ones skipped (no documents)
        if data.format == "bytes":
            continue
        for is_val, doc in split_documents(read_documents(data, Path(cache_dir) / "hf-datasets"), data.val_every):
            if not is_val:
                parts.append(doc.text.encode("utf-8"))
                n += doc.n_bytes
            if limit is not None and n >= limit:
                break
    return Vocabulary.of(tokenizers.train_bpe(b"".join(parts), cfg.train))
