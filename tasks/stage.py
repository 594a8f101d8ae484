"""The stage task: load the parent version, grow it, train it, register the result.

    run_stage(spec, parent, workspace, parent_run_id) -> StageResult

Idempotent: a stage whose key (config + parent weights + code: tasks/config/identity.py) is already
registered is returned as is, never retrained or registered twice. Resumable: every
``checkpoint.every`` steps a checkpoint goes to storage under the stage key (tasks/store/checkpoint.py);
a retried or rerun stage continues from the newest valid one and ends with the same weights, bit for
bit. The training itself is the stage driver's (tasks/driver.py); with ``parallel`` over more than one
process it runs under torchrun (DDP or FSDP2, tasks/parallel/), and this process still registers.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from prefect import task
from prefect.logging import get_run_logger
from prefect.runtime import task_run
from pydantic import BaseModel

from models.data.corpus import Corpus, open_corpus
from models.data.tokenizer import Vocabulary
from models.growth import GrowthError
from models.train.plan import Hooks
from tasks import driver
from tasks.config import StageSpec, stage_key
from tasks.parallel import TorchrunFailed, launch
from tasks.publish import StageProgress, StageWatch
from tasks.record import register_trained, shift, skipped_result
from tasks.registry import (
    ModelRef,
    Registry,
    finalize,
    find_version,
    training_run,
)
from tasks.results import StageResult
from tasks.store import hf_dir, imported_sha256, tokenizer_store
from tasks.version import Trained, write_version
from tasks.workspace import StageJob, Workspace


def pipeline_tokenizer(spec: StageSpec, workspace: Workspace) -> str | None:
    """Resolve the pipeline's tokenizer once (train, or load) and store it for the stages; its sha256,
    or None for the byte vocabulary (a constant of the code: nothing stored, nothing hashed)."""
    if spec.tokenizer.kind == "bytes":
        return None
    return tokenizer_store.put(workspace.storage(), driver.resolve_tokenizer(spec, Path(workspace.cache_dir)))


def key_of(spec: StageSpec, parent: ModelRef | None, tokenizer_sha256: str | None, imported: str | None) -> str:
    """The stage key; an import's "parent" is the imported directory's weights (their sha256: ``imported``)."""
    return stage_key(spec, parent.weights_sha256 if parent else imported, tokenizer_sha256)


def check_tokenizer(parent: ModelRef, tokenizer_sha256: str | None) -> None:
    """Growth keeps token ids: a parent trained with another tokenizer is refused (one line)."""
    if parent.tokenizer_sha256 != tokenizer_sha256:
        theirs, ours = (
            f"{s[:12]}…" if s else "the byte vocabulary" for s in (parent.tokenizer_sha256, tokenizer_sha256)
        )
        raise GrowthError(
            f"parent version {parent.version} was trained with tokenizer {theirs}, this pipeline's is {ours}: "
            "growth keeps the vocabulary, so the tokenizers must be the same"
        )


class Lookup(BaseModel):
    """What the registry says of a stage before it runs: its key, and its version if already registered."""

    key: str
    registered: ModelRef | None
    # an imported stage 1: its directory's weights, hashed here once (a 7B import is ~14 GB to read), carried to
    # the stage key and the version's imported_sha256 tag
    imported_sha256: str | None = None


def look_up(spec: StageSpec, parent: ModelRef | None, tokenizer_sha256: str | None, registry: Registry) -> Lookup:
    """The stage's key and whether a version carries it: looked up once, by the flow, and handed to the task."""
    if parent is not None:
        check_tokenizer(parent, tokenizer_sha256)
    imported = imported_sha256(spec.init) if spec.init else None
    key = key_of(spec, parent, tokenizer_sha256, imported)
    return Lookup(key=key, registered=find_version(registry.client(), spec.model_name, key), imported_sha256=imported)


def _timed(view: driver.Parent | None, watch: StageWatch) -> driver.Parent | None:
    """The driver's parent, its load timed as "loading the parent"."""
    if view is None:
        return None

    def load():
        with watch.timed("loading the parent"):
            return view.load()

    return replace(view, load=load)


def _train(
    job: StageJob, view: driver.Parent | None, corpus: Corpus, vocabulary: Vocabulary, watch: StageWatch, log
) -> Trained:
    """The stage driver in this process (growing ``view``, the parent), or under torchrun for more than one
    process (each rank builds its own view of the job's parent); either way the version directory is written
    once, into ``job.output``: here, or by rank 0."""
    spec = job.spec
    with StageProgress(spec) as progress:
        on_step = watch.observe(progress)
        if spec.parallel.world_size == 1:
            checkpoints = job.checkpoints(watch.storage)  # the stage's one storage client
            initial = (lambda: hf_dir.load_weights(spec.init)) if spec.init else None
            with watch.during("importing the pretrained directory" if spec.init else "loading and growing the parent"):
                prepared = driver.prepare(spec, _timed(view, watch), checkpoints, initial)
            if (resume := prepared.start.resume) is not None:
                log.info("stage %d: resuming from checkpoint step %d of %d", spec.index, resume.step, spec.train.steps)
            with watch.during("training"):
                hooks = Hooks(on_step=on_step)
                run = driver.train_prepared(spec, prepared, hooks=hooks, checkpoints=checkpoints, corpus=corpus)
            with watch.during("registering"):
                return write_version(Path(job.output), run, vocabulary, spec, corpus)
        try:
            with watch.during("training under torchrun"):
                trained = launch(job, on_step, log)
        except TorchrunFailed as e:
            raise (driver.StageRefused if e.user else driver.StageFailed)(str(e)) from None
        resumed_from = trained.resumed_from
        resumed = f", resumed from checkpoint step {resumed_from}" if resumed_from is not None else ""
        p = spec.parallel
        log.info(
            "stage %d: trained by %d processes (%s) under torchrun%s", spec.index, p.world_size, p.strategy, resumed
        )
        return trained


@task(name="run-stage", task_run_name="stage-{spec.index}-{spec.model.n_layers}L", persist_result=False)
def run_stage(
    spec: StageSpec,
    parent: ModelRef | None,
    workspace: Workspace,
    parent_run_id: str | None = None,
    tokenizer_sha256: str | None = None,
    lookup: Lookup | None = None,
) -> StageResult:
    """``tokenizer_sha256``: the pipeline's tokenizer (pipeline_tokenizer), None for the byte vocabulary.
    ``lookup``: the flow's :func:`look_up` of this stage (a retry asks the registry again for its key: its first
    attempt may have registered the stage before it failed)."""
    log = get_run_logger()
    if lookup is None:
        lookup = look_up(spec, parent, tokenizer_sha256, workspace.registry)
    elif (task_run.run_count or 1) > 1:
        found = find_version(workspace.registry.client(), spec.model_name, lookup.key)
        lookup = lookup.model_copy(update={"registered": found})
    key, existing = lookup.key, lookup.registered
    if existing is not None:
        log.info("stage %d already registered as version %s: skipping", spec.index, existing.version)
        finalize(workspace.registry, existing)
        return skipped_result(existing, workspace.registry, spec.model)

    began = time.perf_counter()
    storage = workspace.storage()  # one client for the stage: its checkpoints, their progress, the tokenizer
    watch = StageWatch(spec, workspace.registry, parent_run_id, storage, key)
    vocabulary = tokenizer_store.get(storage, tokenizer_sha256)
    # opened (and, for documents, tokenized into shards) here, before any torchrun rank would read it
    view = workspace.parent(parent) if parent else None  # the driver's parent, built once
    origin = view.origin if view else driver.Origin()
    cache = Path(workspace.cache_dir)
    corpus = open_corpus(spec.data, spec.model.context, spec.seed, vocabulary, cache, origin=origin)
    with workspace.registry.staging() as directory:  # the version's directory: written once, registered as it is
        job = StageJob(
            spec=spec,
            parent=parent,
            workspace=workspace,
            key=key,
            tokenizer_sha256=tokenizer_sha256,
            imported_sha256=lookup.imported_sha256,
            output=str(directory),
        )
        # with train.system_metrics, the stage's MLflow run exists while it trains: MLflow samples the machine onto it
        on, registry = spec.system_metrics, workspace.registry
        with training_run(registry, spec.experiment, spec.index, key, parent_run_id, on) as run_id:
            trained = _train(job, view, corpus, vocabulary, watch, log)
        result = trained.result
        init, val = result.val_loss_init, result.val_loss
        log.info("stage %d: val loss %.4f -> %.4f in %d steps", spec.index, init, val, result.steps)
        ref = register_trained(job, trained, watch, corpus, run_id)
    log.info("stage %d registered as %s version %s", spec.index, ref.name, ref.version)
    offset, cursor = (parent.global_step, parent.data_cursor) if parent else (0, 0)
    done = StageResult(
        ref=ref,
        params=trained.version.params,
        steps=result.steps,
        val_loss_init=result.val_loss_init,
        val_loss=result.val_loss,
        seconds=time.perf_counter() - began,
        skipped=False,
        train_curve=shift(result.train_curve, offset),
        val_curve=shift(result.val_curve, offset),
        resumed_from=trained.resumed_from,
        tokens=(result.cursor - cursor) * spec.model.context,
        tokens_per_s=result.tokens_per_s,
        train_seconds=result.seconds - result.hook_seconds,
        phase_seconds=watch.phase_seconds,
        processes=spec.parallel.world_size,
        gpu_seconds=ref.gpu_seconds or 0.0,
    )
    watch.publish(done, parent)
    return done
