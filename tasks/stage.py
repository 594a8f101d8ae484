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

import json
import tempfile
import time
from pathlib import Path

import yaml
from prefect import task
from prefect.logging import get_run_logger
from prefect.runtime import flow_run, task_run
from tokenizers import Tokenizer

from models import tokenizer as tokenizers
from models.data import ByteCorpus, stdlib_dir
from models.families import ModelConfig, family_of
from models.family import num_params
from models.growth import GrowthError
from models.mixture import MixtureCorpus, report
from models.plan import Hooks
from tasks import driver
from tasks.config import StageSpec, code_version, spec_hash, stage_key
from tasks.parallel import TorchrunFailed, TorchrunJob, launch
from tasks.publish import StageProgress, StageWatch
from tasks.registry import (
    ModelRef,
    Registry,
    StageRunExtras,
    add_pyfunc,
    corpus_input,
    finalize,
    find_version,
    metric_history,
    register,
)
from tasks.registry.schema import IMPORTED, Artifacts, ImportTags, Metrics, RunTags, StageParams, VersionTags
from tasks.results import StageResult
from tasks.store import hf_dir, imported_sha256, redact, save_model, save_optimizer, tokenizer_store
from tasks.workspace import Workspace


def _shift(curve: list[tuple[int, float]], offset: int) -> list[tuple[int, float]]:
    """Stage-local steps -> steps counted across all stages."""
    return [(offset + step, value) for step, value in curve]


def pipeline_tokenizer(spec: StageSpec, workspace: Workspace) -> str | None:
    """Resolve the pipeline's tokenizer once (train, or load) and store it for the stages; its sha256,
    or None for the byte vocabulary (a constant of the code: nothing stored, nothing hashed)."""
    if spec.tokenizer.kind == "bytes":
        return None
    return tokenizer_store.put(workspace.storage(), driver.resolve_tokenizer(spec, Path(workspace.cache_dir)))


def key_of(spec: StageSpec, parent: ModelRef | None, tokenizer_sha256: str | None) -> str:
    """The stage key; an import's "parent" is the imported directory's weights."""
    parent_sha = parent.weights_sha256 if parent else imported_sha256(spec.init) if spec.init else None
    return stage_key(spec, parent_sha, tokenizer_sha256)


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


def skipped_result(ref: ModelRef, registry: Registry, model: ModelConfig) -> StageResult:
    """Rebuild a registered stage's result from the registry."""
    params = family_of(model).num_params(model)
    run = registry.client().get_run(ref.run_id)
    logged = StageParams.read(run.data.params)
    offset = ref.global_step - logged.steps
    val = metric_history(registry, ref.run_id, Metrics.VAL_LOSS)
    init = metric_history(registry, ref.run_id, Metrics.VAL_LOSS_INIT)
    return StageResult(
        ref=ref,
        params=params,
        steps=logged.steps,
        val_loss_init=init[0][1],
        val_loss=val[-1][1],
        seconds=0.0,
        skipped=True,
        tokens=logged.steps * int(logged.train["batch_size"]) * model.context,
        tokens_per_s=run.data.metrics.get(Metrics.TOKENS_PER_S),
        train_curve=_shift(metric_history(registry, ref.run_id, Metrics.TRAIN_LOSS), offset),
        val_curve=_shift(val, offset),
    )


def _train(
    spec: StageSpec,
    parent: ModelRef | None,
    workspace: Workspace,
    key: str,
    watch: StageWatch,
    corpus: ByteCorpus,
    tokenizer_sha256: str | None,
    log,
):
    """The stage driver in this process, or under torchrun for more than one process: a driver.StageRun."""
    with StageProgress(spec) as progress:
        on_step = watch.observe(progress)
        if spec.parallel.world_size == 1:
            checkpoints = workspace.checkpoints(spec, key)
            initial = (lambda: hf_dir.load_weights(spec.init)) if spec.init else None
            with watch.during("importing the pretrained directory" if spec.init else "loading and growing the parent"):
                prepared = driver.prepare(spec, workspace.parent(parent) if parent else None, checkpoints, initial)
            if (resume := prepared.start.resume) is not None:
                log.info("stage %d: resuming from checkpoint step %d of %d", spec.index, resume.step, spec.train.steps)
            with watch.during("training"):
                hooks = Hooks(on_step=on_step)
                return driver.train_prepared(spec, prepared, hooks=hooks, checkpoints=checkpoints, corpus=corpus)
        try:
            with watch.during("training under torchrun"):
                job = TorchrunJob(
                    spec=spec, parent=parent, workspace=workspace, key=key, tokenizer_sha256=tokenizer_sha256
                )
                run = launch(job, on_step, log)
        except TorchrunFailed as e:
            raise driver.StageFailed(str(e)) from None
        resumed = f", resumed from checkpoint step {run.resumed_from}" if run.resumed_from is not None else ""
        p = spec.parallel
        log.info(
            "stage %d: trained by %d processes (%s) under torchrun%s", spec.index, p.world_size, p.strategy, resumed
        )
        return run


def _register(
    spec: StageSpec,
    parent: ModelRef | None,
    workspace: Workspace,
    key: str,
    run: driver.StageRun,
    watch: StageWatch,
    corpus: ByteCorpus,
    tokenizer: Tokenizer,
    tokenizer_sha256: str | None,
) -> ModelRef:
    """Register the trained model with its lineage tags, parameters, loss curves and run extras."""
    model, result = run.model, run.result
    start = parent.data_cursor if parent else 0
    paths = [s.source for s in spec.data.sources] if spec.data.sources else [spec.data.source]
    source = ", ".join(redact(str(Path(p).resolve()) if p else str(stdlib_dir())) for p in paths)
    digest = corpus.digest()
    mix = None
    if isinstance(corpus, MixtureCorpus):  # per-source shares, cursors and validation loss
        mix = report(corpus, model, result.cursor, spec.train.eval_batches, spec.train.batch_size)
    with watch.during("registering"), tempfile.TemporaryDirectory(prefix="staged-model-") as tmp:
        sha = save_model(model, Path(tmp), tokenizer)  # the Llama family's: a Hugging Face model directory
        optimizer_sha = save_optimizer(result.moments, Path(tmp))
        example = tokenizers.encode(tokenizer, b"def main():\n    ").tolist()
        # the same directory is also an MLflow pyfunc model
        add_pyfunc(Path(tmp), spec.model, example)
        tags = VersionTags(
            stage=spec.index,
            n_layers=spec.model.n_layers,
            parent_version=parent.version if parent else None,
            weights_sha256=sha,
            optimizer_sha256=optimizer_sha,
            stage_key=key,
            growth=spec.growth.operator if parent else "none",
            data_cursor=result.cursor,
            global_step=(parent.global_step if parent else 0) + result.steps,  # a stop rule may end it early
            config_hash=spec_hash(spec)[:16],
            code_version=code_version(),
            val_loss=result.val_loss,
            tokenizer_sha256=tokenizer_sha256,
            freeze=spec.growth.freeze if parent and spec.growth.freeze != "none" else None,
            data_cursors=json.dumps(mix.cursors, sort_keys=True) if mix else None,
            data_mixture=json.dumps(mix.weights) if mix else None,
        )
        imported = None
        if spec.init:
            imported = ImportTags(source=IMPORTED, imported_from=spec.init, imported_sha256=imported_sha256(spec.init))
        params = StageParams(
            steps=result.steps,
            params=num_params(model),
            nproc=result.world_size,
            model=spec.model.model_dump(),
            train=spec.train.model_dump(),
            data={"source": source, "corpus_sha256": digest, "cursor_start": start, "cursor_end": result.cursor}
            | ({"mixture": json.dumps(mix.weights), "cursors_end": json.dumps(mix.cursors)} if mix else {}),
        )
        metrics = {
            Metrics.TRAIN_LOSS: result.train_curve,
            Metrics.VAL_LOSS: result.val_curve,
            Metrics.VAL_LOSS_INIT: [(0, result.val_loss_init)],
            Metrics.TOKENS_PER_S: [(result.steps, result.tokens_per_s)],
            Metrics.MFU: [(result.steps, result.mfu)],
            Metrics.PEAK_MEMORY: [(result.steps, result.peak_memory_bytes)],
            Metrics.STEP_TIME_S: watch.step_times,
        }
        for name in mix.weights if mix else ():
            metrics[Metrics.source_val_loss(name)] = [(result.steps, mix.val_loss[name])]
            metrics[Metrics.source_share(name)] = [(result.steps, mix.shares[name])]
        extras = StageRunExtras(
            parent_run_id=watch.parent_run_id,
            tags=RunTags(prefect_flow_run_id=str(flow_run.id or ""), prefect_task_run_id=str(task_run.id or "")),
            texts={Artifacts.STAGE_CONFIG: yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)},
            datasets=[corpus_input(source, digest[:16], start, result.cursor)],
        )
        return register(
            workspace.registry,
            spec.model_name,
            spec.experiment,
            model_dir=Path(tmp),
            tags=tags,
            params=params,
            metrics=metrics,
            extras=extras,
            imported=imported,
        )


@task(name="run-stage", task_run_name="stage-{spec.index}-{spec.model.n_layers}L", persist_result=False)
def run_stage(
    spec: StageSpec,
    parent: ModelRef | None,
    workspace: Workspace,
    parent_run_id: str | None = None,
    tokenizer_sha256: str | None = None,
) -> StageResult:
    """``tokenizer_sha256``: the pipeline's tokenizer (pipeline_tokenizer), None for the byte vocabulary."""
    log = get_run_logger()
    if parent is not None:
        check_tokenizer(parent, tokenizer_sha256)
    key = key_of(spec, parent, tokenizer_sha256)
    if (existing := find_version(workspace.registry.client(), spec.model_name, key)) is not None:
        log.info("stage %d already registered as version %s: skipping", spec.index, existing.version)
        finalize(workspace.registry, existing)
        return skipped_result(existing, workspace.registry, spec.model)

    began = time.perf_counter()
    watch = StageWatch(spec, workspace.registry, parent_run_id, workspace.storage(), key)
    tokenizer = tokenizer_store.get(workspace.storage(), tokenizer_sha256) if tokenizer_sha256 else None
    # opened (and, for documents, tokenized into shards) here, before any torchrun rank would read it
    origin = workspace.parent(parent).origin if parent else driver.Origin()
    cache = Path(workspace.cache_dir)
    corpus = driver.open_corpus(spec.data, spec.model.context, spec.seed, tokenizer, cache, origin=origin)
    run = _train(spec, parent, workspace, key, watch, corpus, tokenizer_sha256, log)
    result = run.result
    init, val = result.val_loss_init, result.val_loss
    log.info("stage %d: val loss %.4f -> %.4f in %d steps", spec.index, init, val, result.steps)
    ref = _register(
        spec, parent, workspace, key, run, watch, corpus, tokenizer or tokenizers.byte_tokenizer(), tokenizer_sha256
    )
    log.info("stage %d registered as %s version %s", spec.index, ref.name, ref.version)
    offset, cursor = (parent.global_step, parent.data_cursor) if parent else (0, 0)
    done = StageResult(
        ref=ref,
        params=num_params(run.model),
        steps=result.steps,
        val_loss_init=result.val_loss_init,
        val_loss=result.val_loss,
        seconds=time.perf_counter() - began,
        skipped=False,
        train_curve=_shift(result.train_curve, offset),
        val_curve=_shift(result.val_curve, offset),
        resumed_from=run.resumed_from,
        tokens=(result.cursor - cursor) * spec.model.context,
        tokens_per_s=result.tokens_per_s,
        train_seconds=result.seconds - result.hook_seconds,
    )
    watch.publish(done, parent)
    return done
