"""The MLflow side of a stage: where runs and versions live, finding, downloading, registering.

Everything goes through an explicit ``MlflowClient`` (the fluent API keeps a thread-local
active run and a process-global tracking URI; neither is touched here).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param
from mlflow.entities.model_registry import ModelVersion
from pydantic import BaseModel

from tasks.config import PipelineConfig, StageSpec, StorageConfig, pipeline_hash
from tasks.weights import load_optimizer, load_state

_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch call


class Store(BaseModel):
    """Where MLflow keeps runs, registered models and artifacts."""

    tracking_uri: str
    artifact_location: str | None = None  # only for the embedded store; a server chooses its own
    checkpoints: str = ""  # storage URI of the in-stage checkpoints (tasks/storage.py)
    max_attempts: int = 5  # botocore attempts per S3 call

    @classmethod
    def resolve(cls, workdir: str | Path, storage: StorageConfig | None = None) -> Store:
        """``MLFLOW_TRACKING_URI`` when set, else an embedded SQLite store under ``workdir``.

        Checkpoints go to ``storage.uri`` (default ``<workdir>/checkpoints``); with an S3 storage
        URI the embedded store keeps its artifacts in the same bucket, under ``mlartifacts/``.
        """
        storage = storage or StorageConfig()
        root = Path(workdir).resolve()
        base = (storage.uri or str(root)).rstrip("/")
        remote = base.startswith("s3://")
        checkpoints = f"{base}/checkpoints" if remote or storage.uri is None else base
        common = {"checkpoints": checkpoints, "max_attempts": storage.max_attempts}
        if uri := os.environ.get("MLFLOW_TRACKING_URI"):
            return cls(tracking_uri=uri, **common)
        artifacts = f"{base}/mlartifacts" if remote else (root / "mlartifacts").as_uri()
        return cls(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_location=artifacts, **common)

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)


class ModelRef(BaseModel):
    """A registered stage, as the next stage sees it."""

    name: str
    version: str
    stage: int
    n_layers: int
    run_id: str
    source: str
    weights_sha256: str
    stage_key: str
    data_cursor: int  # where the next stage's data stream starts
    global_step: int  # steps trained by this stage and all its ancestors
    optimizer_sha256: str | None = None  # of optimizer.safetensors; None for versions registered without it


def _ref(mv: ModelVersion) -> ModelRef:
    t = mv.tags
    return ModelRef(
        name=mv.name,
        version=str(mv.version),
        stage=int(t["stage"]),
        n_layers=int(t["n_layers"]),
        run_id=mv.run_id,
        source=mv.source,
        weights_sha256=t["weights_sha256"],
        stage_key=t["stage_key"],
        data_cursor=int(t["data_cursor"]),
        global_step=int(t["global_step"]),
        optimizer_sha256=t.get("optimizer_sha256") or None,
    )


def find_version(client: MlflowClient, model_name: str, stage_key: str) -> ModelRef | None:
    """The version already registered for this exact stage, if any."""
    found = client.search_model_versions(f"name = '{model_name}' and tags.stage_key = '{stage_key}'")
    return _ref(found[0]) if found else None


def get_version(client: MlflowClient, model_name: str, version: str) -> ModelRef:
    """A registered version by number (``staged run --from-version``); MlflowException when absent."""
    return _ref(client.get_model_version(model_name, str(version)))


def finalize(store: Store, ref: ModelRef) -> None:
    """Finish what a crash after ``create_model_version`` may have left undone: alias and run status."""
    client = store.client()
    client.set_registered_model_alias(ref.name, f"stage-{ref.stage}", ref.version)
    if client.get_run(ref.run_id).info.status == "RUNNING":
        client.set_terminated(ref.run_id, "FINISHED")


def fetch(store: Store, ref: ModelRef, dst: Path) -> Path:
    """Download a version's artifact directory; return its local path."""
    return Path(
        mlflow.artifacts.download_artifacts(artifact_uri=ref.source, dst_path=str(dst), tracking_uri=store.tracking_uri)
    )


def download(store: Store, ref: ModelRef, dst: Path):
    """Fetch a version's artifacts, verify the weights' sha256, return (GPTConfig, state dict)."""
    return load_state(fetch(store, ref, dst), ref.weights_sha256)


def download_with_optimizer(store: Store, ref: ModelRef, dst: Path):
    """(GPTConfig, state dict, AdamW moments or None), each file verified against its registered sha256."""
    local = fetch(store, ref, dst)
    cfg, state = load_state(local, ref.weights_sha256)
    return cfg, state, load_optimizer(local, ref.optimizer_sha256)


class Pipeline(BaseModel):
    """One pipeline as MLflow shows it: a parent run named ``<model>-<config hash>`` over one run per stage."""

    model_name: str
    experiment: str
    config_hash: str  # tasks.config.pipeline_hash
    flow_run_id: str = ""  # the Prefect flow run training it now
    config_yaml: str = ""  # the resolved PipelineConfig, logged as config/pipeline.yaml

    @classmethod
    def of(cls, config: PipelineConfig, flow_run_id: str = "") -> Pipeline:
        name = config.registry.model_name
        return cls(
            model_name=name,
            experiment=config.registry.experiment or name,
            config_hash=pipeline_hash(config),
            flow_run_id=flow_run_id,
            config_yaml=yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False),
        )

    @property
    def run_name(self) -> str:
        """The Prefect flow run's name and the MLflow parent run's."""
        return f"{self.model_name}-{self.config_hash}"


def pipeline_run(store: Store, pipeline: Pipeline, *, create: bool) -> str | None:
    """The parent run of this pipeline's stage runs (its id), or None when there is none and not ``create``.

    One parent per pipeline, created only when a stage of it trains (a rerun that skips every stage creates
    nothing). A parent that is not FINISHED (its flow run crashed or a stage failed) is taken over by the next
    run of the same config: its ``prefect_flow_run_id`` tag moves to the new flow run, so a resumed pipeline
    is still one parent with one child per stage. A FINISHED parent is never reopened: training the same
    config again (say, after a code change made every stage new) gets a new parent run.
    """
    client = store.client()
    experiment_id = _experiment_id(client, store, pipeline.experiment)
    found = client.search_runs(
        [experiment_id],
        max_results=1,
        order_by=["attributes.start_time DESC"],
        filter_string=f"tags.run_kind = 'pipeline' and tags.config_hash = '{pipeline.config_hash}' and attributes.status != 'FINISHED'",
    )
    if found:
        run = found[0]
        if create and run.data.tags.get("prefect_flow_run_id") != pipeline.flow_run_id:
            client.set_tag(run.info.run_id, "prefect_flow_run_id", pipeline.flow_run_id)
        if create and run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id
    if not create:
        return None
    tags = {"run_kind": "pipeline", "config_hash": pipeline.config_hash, "prefect_flow_run_id": pipeline.flow_run_id}
    run_id = client.create_run(experiment_id, run_name=pipeline.run_name, tags=tags).info.run_id
    client.log_text(run_id, pipeline.config_yaml, "config/pipeline.yaml")
    return run_id


def end_pipeline_run(store: Store, pipeline: Pipeline, status: str) -> str | None:
    """Mark the pipeline's open parent run FINISHED or FAILED; returns its id (None: no open parent)."""
    if (run_id := pipeline_run(store, pipeline, create=False)) is not None:
        store.client().set_terminated(run_id, status)
    return run_id


@dataclass
class StageRunExtras:
    """What a stage run carries besides weights, params and metrics: its parent run, text artifacts, its data."""

    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)  # on the run only, not on the model version
    texts: dict[str, str] = field(default_factory=dict)  # artifact path -> content
    params: dict[str, object] = field(default_factory=dict)
    datasets: list[DatasetInput] = field(default_factory=list)


def corpus_input(source: str, digest: str, start: int, end: int, context: str = "training") -> DatasetInput:
    """An MLflow dataset input: the corpus (a local path, by content digest) and the cursor range read from it."""
    src = get_dataset_source_from_json(json.dumps({"uri": source}), source_type="local")
    dataset = Dataset(**MetaDataset(src, name=Path(source).name or source, digest=digest).to_dict())
    tags = {"mlflow.data.context": context, "cursor_start": str(start), "cursor_end": str(end)}
    return DatasetInput(dataset=dataset, tags=[InputTag(k, v) for k, v in tags.items()])


def _experiment_id(client: MlflowClient, store: Store, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name, artifact_location=store.artifact_location)


def register(
    store: Store,
    spec: StageSpec,
    *,
    model_dir: Path,
    tags: dict[str, str],
    params: dict[str, object],
    metrics: dict[str, list[tuple[int, float]]],
    extras: StageRunExtras | None = None,
) -> ModelRef:
    """Log one MLflow run for the stage and register its weights as a new model version, exactly once.

    The version is created last, with every lineage tag at once: a version that exists is complete.
    If one already carries this ``stage_key`` (an earlier attempt died after creating it), it is
    returned instead; runs left by attempts that died before creating it are deleted first.
    With ``extras.parent_run_id`` the run is nested under the pipeline's parent run.
    """
    extras = extras or StageRunExtras()
    client = store.client()
    key = tags["stage_key"]
    if (existing := find_version(client, spec.model_name, key)) is not None:
        finalize(store, existing)
        return existing
    experiment_id = _experiment_id(client, store, spec.experiment)
    delete_orphans(client, experiment_id, key)
    run_tags = {**tags, **extras.tags, **({"mlflow.parentRunId": extras.parent_run_id} if extras.parent_run_id else {})}
    run = client.create_run(experiment_id, run_name=f"stage-{spec.index}", tags=run_tags)
    run_id = run.info.run_id
    try:
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in {**params, **extras.params}.items()])
        if extras.datasets:
            client.log_inputs(run_id, datasets=extras.datasets)
        for path, text in extras.texts.items():
            client.log_text(run_id, text, path)
        points = [Metric(name, value, 0, step) for name, curve in metrics.items() for step, value in curve]
        for i in range(0, len(points), _BATCH):
            client.log_batch(run_id, metrics=points[i : i + _BATCH])
        client.log_artifacts(run_id, str(model_dir), "model")
        if not client.search_registered_models(f"name = '{spec.model_name}'"):
            client.create_registered_model(spec.model_name)
        mv = client.create_model_version(
            spec.model_name, source=f"{run.info.artifact_uri}/model", run_id=run_id, tags=tags
        )
        client.set_registered_model_alias(spec.model_name, f"stage-{spec.index}", str(mv.version))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return _ref(client.get_model_version(spec.model_name, str(mv.version)))


def delete_orphans(client: MlflowClient, experiment_id: str, stage_key: str) -> list[str]:
    """Delete runs of this stage key that never became a model version (their attempt died mid-way)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.stage_key = '{stage_key}'")
    orphans = [r.info.run_id for r in runs]
    for run_id in orphans:
        client.delete_run(run_id)
    return orphans


def metric_history(store: Store, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in store.client().get_metric_history(run_id, key)]
