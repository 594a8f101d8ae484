"""What a stage leaves in the registry: its version (directory, tags, params, metrics, run extras), and a
registered stage's result read back from it.

    ref = register_trained(job, trained, watch, corpus)
    result = skipped_result(ref, registry, model_config)   # a stage found registered: nothing to train
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from prefect.runtime import flow_run, task_run

from models.data.bytes import stdlib_dir
from models.data.corpus import Corpus
from models.families.lookup import ModelConfig, family_of
from models.growth import KEEPS_DEPTH, layer_map
from models.layermap import describe_freeze, trainable
from tasks.config import StageSpec, code_version, eval_set_id, spec_hash
from tasks.publish import StageWatch
from tasks.registry import (
    ModelRef,
    Registry,
    StageRunExtras,
    corpus_input,
    metric_history,
    register,
)
from tasks.registry.schema import IMPORTED, Artifacts, ImportTags, Metrics, RunTags, StageParams, VersionTags
from tasks.results import StageResult
from tasks.store import redact
from tasks.version import Trained
from tasks.workspace import StageJob


def shift(curve: list[tuple[int, float]], offset: int) -> list[tuple[int, float]]:
    """Stage-local steps -> steps counted across all stages."""
    return [(offset + step, value) for step, value in curve]


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
        train_curve=shift(metric_history(registry, ref.run_id, Metrics.TRAIN_LOSS), offset),
        val_curve=shift(val, offset),
    )


def _layer_map(spec: StageSpec, parent: ModelRef | None) -> str | None:
    """The depth map of a grown stage, as its ``layer_map`` tag reads; None for stage 1, width and upcycle growth."""
    if parent is None or spec.growth.operator in KEEPS_DEPTH:
        return None
    return layer_map(spec.growth, parent.n_layers, spec.model.n_layers).describe()


def _trained(spec: StageSpec, parent: ModelRef | None) -> str | None:
    """What a frozen stage trained (its ``trained`` tag); None when everything trained."""
    if parent is None or spec.growth.freeze == "none":
        return None
    return trainable(spec.growth.freeze, layer_map(spec.growth, parent.n_layers, spec.model.n_layers)).describe()


def _eval_set(spec: StageSpec, tokenizer_sha256: str | None) -> str | None:
    """The held-out set of the stage's final validation loss (in fp32 only: the gate's arithmetic)."""
    if spec.train.precision != "fp32":
        return None
    t = spec.train
    return eval_set_id(spec.data, spec.seed, spec.model.context, tokenizer_sha256, t.eval_batches, t.batch_size)


def register_trained(
    job: StageJob, trained: Trained, watch: StageWatch, corpus: Corpus, run_id: str | None = None
) -> ModelRef:
    """Register the stage's version directory (``job.output``, written once: tasks/version.py) with its lineage
    tags, parameters, loss curves and run extras; ``run_id``: the stage's run, when its training created it
    (system metrics: tasks/registry/monitor.py)."""
    spec, parent, registry = job.spec, job.parent, job.workspace.registry
    result, version, mix = trained.result, trained.version, trained.version.mixture
    start = parent.data_cursor if parent else 0
    paths = [s.source for s in spec.data.sources] if spec.data.sources else [spec.data.source]
    source = ", ".join(redact(str(Path(p).resolve()) if p else str(stdlib_dir())) for p in paths)
    digest = corpus.digest()
    with watch.during("registering"):
        tags = VersionTags(
            stage=spec.index,
            n_layers=spec.model.n_layers,
            parent_version=parent.version if parent else None,
            weights_sha256=version.weights_sha256,
            optimizer_sha256=version.optimizer_sha256,
            stage_key=job.key,
            growth=spec.growth.operator if parent else "none",
            data_cursor=result.cursor,
            global_step=(parent.global_step if parent else 0) + result.steps,  # a stop rule may end it early
            config_hash=spec_hash(spec)[:16],
            code_version=code_version(),
            val_loss=result.val_loss,
            tokenizer_sha256=job.tokenizer_sha256,
            freeze=describe_freeze(spec.growth.freeze) if parent and spec.growth.freeze != "none" else None,
            trained=_trained(spec, parent),
            layer_map=_layer_map(spec, parent),
            data_cursors=json.dumps(mix.cursors, sort_keys=True) if mix else None,
            data_mixture=json.dumps(mix.weights) if mix else None,
            eval_set=_eval_set(spec, job.tokenizer_sha256),
            gpu_seconds=result.world_size * watch.elapsed(),
        )
        imported = None
        if spec.init:
            imported = ImportTags(source=IMPORTED, imported_from=spec.init, imported_sha256=job.imported_sha256)
        params = StageParams(
            steps=result.steps,
            params=version.params,
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
            Metrics.GPU_SECONDS: [(result.steps, tags.gpu_seconds)],
        }
        for name in mix.weights if mix else ():
            metrics[Metrics.source_val_loss(name)] = [(result.steps, mix.val_loss[name])]
            metrics[Metrics.source_share(name)] = [(result.steps, mix.shares[name])]
        extras = StageRunExtras(
            parent_run_id=watch.parent_run_id,
            run_id=run_id,
            tags=RunTags(prefect_flow_run_id=str(flow_run.id or ""), prefect_task_run_id=str(task_run.id or "")),
            texts={Artifacts.STAGE_CONFIG: yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)},
            datasets=[corpus_input(source, digest[:16], start, result.cursor)],
        )
        return register(
            registry,
            spec.model_name,
            spec.experiment,
            model_dir=Path(job.output),
            tags=tags,
            params=params,
            metrics=metrics,
            extras=extras,
            imported=imported,
            hashes=version.hashes,
        )
