"""The MLflow registry: where runs and versions live; finding, registering and fetching versions.

Everything goes through an explicit ``MlflowClient`` (the fluent API keeps a thread-local
active run and a process-global tracking URI; neither is touched here).
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.entities.model_registry import ModelVersion
from pydantic import BaseModel

from tasks.registry.runs import StageRunExtras, experiment_id
from tasks.registry.schema import (
    PARENT_RUN_TAG,
    Artifacts,
    ImportTags,
    StageParams,
    VersionTags,
    stage_alias,
    stage_run_name,
    stage_runs_filter,
    versions_filter,
)
from tasks.store import load_optimizer, load_state

_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch call


class Registry(BaseModel):
    """Where MLflow keeps runs, registered models and artifacts."""

    tracking_uri: str
    artifact_location: str | None = None  # only for the embedded store; a server chooses its own

    @classmethod
    def resolve(cls, workdir: str | Path, storage_uri: str | None = None) -> Registry:
        """``MLFLOW_TRACKING_URI`` when set, else an embedded SQLite store under ``workdir`` whose artifacts go
        to ``<workdir>/mlartifacts``, or with an S3 ``storage_uri`` to ``<storage_uri>/mlartifacts``."""
        if uri := os.environ.get("MLFLOW_TRACKING_URI"):
            return cls(tracking_uri=uri)
        root = Path(workdir).resolve()
        remote = storage_uri is not None and storage_uri.startswith("s3://")
        artifacts = f"{storage_uri.rstrip('/')}/mlartifacts" if remote else (root / "mlartifacts").as_uri()
        return cls(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_location=artifacts)

    @property
    def embedded(self) -> bool:
        return self.artifact_location is not None

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    @property
    def server(self) -> str | None:
        """The MLflow UI's base URL when the tracking URI is an http(s) server; None for an embedded store."""
        uri = self.tracking_uri
        return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None

    def run_page(self, experiment_id: str, run_id: str) -> str | None:
        return f"{self.server}/#/experiments/{experiment_id}/runs/{run_id}" if self.server else None

    def version_page(self, name: str, version: str) -> str | None:
        return f"{self.server}/#/models/{name}/versions/{version}" if self.server else None


class ModelRef(VersionTags):
    """A registered stage, as the next stage sees it: its tags and where it lives."""

    name: str
    version: str
    run_id: str
    source: str

    @classmethod
    def of(cls, mv: ModelVersion) -> ModelRef:
        tags = VersionTags.from_tags(mv.tags)
        if tags is None:
            raise ValueError(f"model {mv.name!r} version {mv.version} carries no stage tags")
        return cls(name=mv.name, version=str(mv.version), run_id=mv.run_id, source=mv.source, **tags.model_dump())

    @property
    def tags(self) -> VersionTags:
        return VersionTags(**self.model_dump(include=set(VersionTags.model_fields)))


def find_version(client: MlflowClient, model_name: str, stage_key: str) -> ModelRef | None:
    """The version already registered for this exact stage, if any."""
    found = client.search_model_versions(versions_filter(model_name, stage_key))
    return ModelRef.of(found[0]) if found else None


def get_version(client: MlflowClient, model_name: str, version: str) -> ModelRef:
    """A registered version by number (``staged run --from-version``); MlflowException when absent."""
    return ModelRef.of(client.get_model_version(model_name, str(version)))


def finalize(registry: Registry, ref: ModelRef) -> None:
    """Finish what a crash after ``create_model_version`` may have left undone: alias and run status."""
    client = registry.client()
    client.set_registered_model_alias(ref.name, stage_alias(ref.stage), ref.version)
    if client.get_run(ref.run_id).info.status == "RUNNING":
        client.set_terminated(ref.run_id, "FINISHED")


def fetch(registry: Registry, source: str, dst: Path) -> Path:
    """Download a version's artifact directory (its ``source``); return its local path."""
    uri = registry.tracking_uri
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=uri))


def download(registry: Registry, ref: ModelRef, dst: Path):
    """Fetch a version's artifacts, verify the weights' sha256, return (GPTConfig, state dict)."""
    return load_state(fetch(registry, ref.source, dst), ref.weights_sha256)


def download_with_optimizer(registry: Registry, ref: ModelRef, dst: Path):
    """(GPTConfig, state dict, AdamW moments or None), each file verified against its registered sha256."""
    local = fetch(registry, ref.source, dst)
    cfg, state = load_state(local, ref.weights_sha256)
    return cfg, state, load_optimizer(local, ref.optimizer_sha256)


def register(
    registry: Registry,
    model_name: str,
    experiment: str,
    *,
    model_dir: Path,
    tags: VersionTags,
    params: StageParams,
    metrics: dict[str, list[tuple[int, float]]],
    extras: StageRunExtras | None = None,
    imported: ImportTags | None = None,
) -> ModelRef:
    """Log one MLflow run for the stage and register its weights as a new model version, exactly once.

    The version is created last, with every lineage tag at once: a version that exists is complete.
    If one already carries this ``stage_key`` (an earlier attempt died after creating it), it is
    returned instead; runs left by attempts that died before creating it are deleted first.
    With ``extras.parent_run_id`` the run is nested under the pipeline's parent run; ``imported`` marks a
    stage 1 registered from a local Hugging Face directory.
    """
    extras = extras or StageRunExtras()
    client = registry.client()
    if (existing := find_version(client, model_name, tags.stage_key)) is not None:
        finalize(registry, existing)
        return existing
    exp = experiment_id(client, registry.artifact_location, experiment)
    delete_orphans(client, exp, tags.stage_key)
    version_tags = tags.to_tags() | (imported.to_tags() if imported else {})
    run_tags = {**version_tags, **extras.tags.to_tags()}
    if extras.parent_run_id:
        run_tags[PARENT_RUN_TAG] = extras.parent_run_id
    run = client.create_run(exp, run_name=stage_run_name(tags.stage), tags=run_tags)
    run_id = run.info.run_id
    try:
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.to_params().items()])
        if extras.datasets:
            client.log_inputs(run_id, datasets=extras.datasets)
        for path, text in extras.texts.items():
            client.log_text(run_id, text, path)
        points = [Metric(name, value, 0, step) for name, curve in metrics.items() for step, value in curve]
        for i in range(0, len(points), _BATCH):
            client.log_batch(run_id, metrics=points[i : i + _BATCH])
        client.log_artifacts(run_id, str(model_dir), Artifacts.MODEL)
        if not client.search_registered_models(f"name = '{model_name}'"):
            client.create_registered_model(model_name)
        source = f"{run.info.artifact_uri}/{Artifacts.MODEL}"
        mv = client.create_model_version(model_name, source=source, run_id=run_id, tags=version_tags)
        client.set_registered_model_alias(model_name, stage_alias(tags.stage), str(mv.version))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return ModelRef.of(client.get_model_version(model_name, str(mv.version)))


def delete_orphans(client: MlflowClient, experiment: str, stage_key: str) -> list[str]:
    """Delete runs of this stage key that never became a model version (their attempt died mid-way)."""
    orphans = [r.info.run_id for r in client.search_runs([experiment], filter_string=stage_runs_filter(stage_key))]
    for run_id in orphans:
        client.delete_run(run_id)
    return orphans


def metric_history(registry: Registry, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in registry.client().get_metric_history(run_id, key)]
