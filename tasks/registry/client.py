"""The MLflow registry: where runs and versions live; finding, registering and fetching versions.

Everything goes through an explicit ``MlflowClient`` (the fluent API keeps a thread-local
active run and a process-global tracking URI; neither is touched here).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from pydantic import BaseModel

from tasks.registry.runs import StageRunExtras, experiment_id
from tasks.registry.schema import (
    PARENT_RUN_TAG,
    Artifacts,
    ImportTags,
    Metrics,
    StageParams,
    VersionTags,
    stage_alias,
    stage_run_name,
    stage_runs_filter,
    versions_filter,
)
from tasks.store import fsync, local_dir, redact, write_manifest

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
            return cls(tracking_uri=_credentials_to_env(uri))
        root = Path(workdir).resolve()
        remote = storage_uri is not None and storage_uri.startswith("s3://")
        artifacts = f"{storage_uri.rstrip('/')}/mlartifacts" if remote else (root / "mlartifacts").as_uri()
        return cls(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_location=artifacts)

    @property
    def embedded(self) -> bool:
        return self.artifact_location is not None

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh directory to write a version into: beside the embedded store's artifacts, so that
        ``register`` moves it into place rather than copying it; elsewhere a temporary one."""
        if (root := self.staging_root()) is not None:
            root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="staged-model-", dir=root) as tmp:
            yield Path(tmp) / "model"

    def staging_root(self) -> Path | None:
        """Where :meth:`staging` writes when the artifacts are on this disk (the embedded store's), else None."""
        artifacts = local_dir(self.artifact_location) if self.artifact_location else None
        return artifacts / ".staging" if artifacts is not None else None

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    @property
    def server(self) -> str | None:
        """The MLflow UI's base URL (never with credentials) for an http(s) server; None for an embedded store."""
        uri = redact(self.tracking_uri)
        return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None

    def run_page(self, experiment_id: str, run_id: str) -> str | None:
        return f"{self.server}/#/experiments/{experiment_id}/runs/{run_id}" if self.server else None

    def version_page(self, name: str, version: str) -> str | None:
        return f"{self.server}/#/models/{name}/versions/{version}" if self.server else None


def _credentials_to_env(uri: str) -> str:
    """A tracking URI with ``user:password@``: the credentials move to MLflow's own variables
    (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``, unless already set) and the URI is used without them, here
    and in every process started from here, so neither MLflow's messages nor ours can print them."""
    parts = urlsplit(uri)
    if parts.username is None:
        return uri
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parts.username))
    if parts.password is not None:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parts.password))
    os.environ["MLFLOW_TRACKING_URI"] = redact(uri)
    return redact(uri)


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
    """The version registered for this exact stage, if any: the lowest-numbered one, the winner of any
    race between registrations (see ``register``)."""
    found = client.search_model_versions(versions_filter(model_name, stage_key))
    return ModelRef.of(min(found, key=lambda v: int(v.version))) if found else None


def get_version(client: MlflowClient, model_name: str, version: str) -> ModelRef:
    """A registered version by number (``staged run --from-version``); MlflowException when absent."""
    return ModelRef.of(client.get_model_version(model_name, str(version)))


def set_alias(client: MlflowClient, name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version``. MLflow's SQL store looks the alias up, then inserts or updates it, in a
    transaction that is not serialized: racers that settled on the same winner (``register``) and set its stage
    alias at the same moment both miss it, and the slower insert fails on ``registered_model_alias_pk``. By then the
    alias exists, so setting it again updates it, to the same version: what the loser should have done. Any other
    error, or a second failure, is raised."""
    try:
        client.set_registered_model_alias(name, alias, version)
    except MlflowException as e:
        if "registered_model_alias_pk" not in str(e):
            raise
        client.set_registered_model_alias(name, alias, version)


def finalize(registry: Registry, ref: ModelRef) -> None:
    """Finish what a crash after ``create_model_version`` may have left undone: alias and run status."""
    client = registry.client()
    set_alias(client, ref.name, stage_alias(ref.stage), ref.version)
    if client.get_run(ref.run_id).info.status == "RUNNING":
        client.set_terminated(ref.run_id, "FINISHED")


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
    hashes: dict[str, str] | None = None,
) -> ModelRef:
    """Log one MLflow run for the stage and register ``model_dir`` as a new model version, exactly once.

    The directory gets its sha256 manifest (tasks/store/manifest.py), recorded in the version's
    ``manifest_sha256`` tag; ``hashes`` are the sha256s (by relative path) of files the caller hashed while
    writing them, not hashed again. Where the run's artifacts live on the same disk as ``model_dir``
    (the embedded store, with ``model_dir`` from :meth:`Registry.staging`), the directory is *moved* there,
    flushed to disk: its bytes are written once, never copied; elsewhere it is uploaded. The version is
    created last, with every tag at once: a version that exists is complete. Racing registrations of one stage
    key (two ``staged run`` of the same config) are settled after the fact: each creates its version, then the
    lowest-numbered version with the key wins (MLflow numbers versions in commit order, so every racer sees the
    same winner); a loser deletes its own version and run and returns the winner. Runs of attempts that died
    before creating a version are deleted when they are over for sure (``delete_orphans``); a live attempt's
    run never is. With ``extras.parent_run_id`` the run is nested under the pipeline's parent run;
    ``imported`` marks a stage 1 registered from a local Hugging Face directory.
    """
    extras = extras or StageRunExtras()
    client = registry.client()
    if (existing := find_version(client, model_name, tags.stage_key)) is not None:
        if extras.run_id:  # another attempt registered this stage while this one trained: its run stands
            client.delete_run(extras.run_id)
        finalize(registry, existing)
        return existing
    exp = experiment_id(client, registry.artifact_location, experiment)
    delete_orphans(client, exp, tags.stage_key, keep=extras.run_id)
    staged = (root := registry.staging_root()) is not None and model_dir.resolve().is_relative_to(root.resolve())
    tags = tags.model_copy(update={"manifest_sha256": write_manifest(model_dir, hashes, durable=staged)})
    version_tags = tags.to_tags() | (imported.to_tags() if imported else {})
    run_tags = {**version_tags, **extras.tags.to_tags()}
    if extras.parent_run_id:
        run_tags[PARENT_RUN_TAG] = extras.parent_run_id
    if extras.run_id:  # created when its training began (tasks/registry/monitor.py): it gets the tags now
        run = client.get_run(extras.run_id)
        client.log_batch(extras.run_id, tags=[RunTag(k, v) for k, v in run_tags.items()])
    else:
        run = client.create_run(exp, run_name=stage_run_name(tags.stage), tags=run_tags)
    run_id = run.info.run_id
    try:
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.to_params().items()])
        if extras.datasets:
            _log_inputs(client, run_id, extras.datasets)
        for path, text in extras.texts.items():
            client.log_text(run_id, text, path)
        points = [Metric(name, value, 0, step) for name, curve in metrics.items() for step, value in curve]
        for i in range(0, len(points), _BATCH):
            client.log_batch(run_id, metrics=points[i : i + _BATCH])
        source = f"{run.info.artifact_uri}/{Artifacts.MODEL}"
        if not (staged and _moved(model_dir, local_dir(source))):
            client.log_artifacts(run_id, str(model_dir), Artifacts.MODEL)
        _ensure_registered_model(client, model_name)
        mv = client.create_model_version(model_name, source=source, run_id=run_id, tags=version_tags)
        winner = find_version(client, model_name, tags.stage_key)
        if winner.version != str(mv.version):  # another attempt registered this stage first: its version stands
            for loser in client.search_model_versions(versions_filter(model_name, tags.stage_key)):
                if str(loser.version) != winner.version:
                    _delete_version(client, model_name, str(loser.version))
            client.delete_run(run_id)
            finalize(registry, winner)
            return winner
        set_alias(client, model_name, stage_alias(tags.stage), str(mv.version))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return ModelRef.of(client.get_model_version(model_name, str(mv.version)))


def _log_inputs(client: MlflowClient, run_id: str, datasets: list) -> None:
    """Link the run to its datasets. MLflow's SQL store checks for a dataset (experiment, name, digest) and then
    inserts it, in one transaction that is not serialized: two stages of one experiment logging the same corpus at
    the same moment both miss it and the slower insert fails on the ``dataset_pk`` unique constraint, rolling its
    whole transaction back. By then the dataset is committed, so logging again finds it and links it: what the
    loser should have done. Any other error, or a second failure, is raised."""
    try:
        client.log_inputs(run_id, datasets=datasets)
    except MlflowException as e:
        if "dataset_pk" not in str(e):
            raise
        client.log_inputs(run_id, datasets=datasets)


def _moved(model_dir: Path, target: Path | None) -> bool:
    """Move ``model_dir`` to ``target`` where a rename can (same disk, target free); False: upload it instead."""
    if target is None or target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(model_dir, target)
    except OSError:  # another file system (EXDEV), or the like: the caller copies it
        return False
    fsync(target.parent)  # the rename itself, durable
    return True


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":  # exists, or a racing registration made it first
            raise


def _delete_version(client: MlflowClient, name: str, version: str) -> None:
    try:
        client.delete_model_version(name, version)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":  # its own attempt deleted it already
            raise


STALE_RUN_S = 3600  # a registration takes seconds: a stage run still RUNNING without a version after this is dead


def delete_orphans(client: MlflowClient, experiment: str, stage_key: str, keep: str | None = None) -> list[str]:
    """Delete runs of this stage key that never became a model version and whose attempt is over for sure:
    terminated (FAILED, KILLED: an attempt that failed while registering or training), or RUNNING with nothing
    logged for more than ``STALE_RUN_S`` (killed mid-way; a run created for training logs its system metrics every
    few seconds while it lives). A RUNNING run active more recently may be another live attempt's: it is left alone,
    and that attempt deletes its run itself if it loses the race. ``keep``: the caller's own run. Call only when no
    version has the key."""
    cutoff_ms = (time.time() - STALE_RUN_S) * 1000
    orphans = [
        r.info.run_id
        for r in client.search_runs([experiment], filter_string=stage_runs_filter(stage_key))
        if r.info.run_id != keep and (r.info.status != "RUNNING" or _last_active_ms(r) < cutoff_ms)
    ]
    for run_id in orphans:
        client.delete_run(run_id)
    return orphans


def _last_active_ms(run) -> int:
    """When a run last showed life: its start, or its newest metric (the latest value of each key, with its
    timestamp, as search_runs returns it; MLflow's own system metrics monitor reads ``_metric_objs`` the same way)."""
    return max([run.info.start_time or 0, *(m.timestamp for m in run.data._metric_objs)])


def metric_history(registry: Registry, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in registry.client().get_metric_history(run_id, key)]


def log_scores(registry: Registry, run_id: str, scores: dict[str, dict[str, float]]) -> None:
    """Downstream scores on a version's run, as metrics ``eval/<task>/<metric>`` (one batch call)."""
    now = int(time.time() * 1000)
    metrics = [Metric(Metrics.eval_metric(t, m), v, now, 0) for t, row in scores.items() for m, v in row.items()]
    registry.client().log_batch(run_id, metrics=metrics)


def read_scores(registry: Registry, run_id: str) -> dict[str, dict[str, float]]:
    """The downstream scores logged on a run: {task: {metric: value}}."""
    scores: dict[str, dict[str, float]] = {}
    for key, value in registry.client().get_run(run_id).data.metrics.items():
        if key.startswith(Metrics.EVAL_PREFIX) and key.count("/") == 2:
            _, task, metric = key.split("/")
            scores.setdefault(task, {})[metric] = value
    return scores
