"""MLflow runs around the versions: the pipeline's parent run, and what a stage run carries besides its model.

parent run  <model>-<config hash>   opened by the flow before the first stage that trains,
  nested run stage-<k>              ... finished or failed by the flow, in one place (flows/staged.py)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from mlflow import MlflowClient
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from pydantic import BaseModel

from tasks.config import PipelineConfig, pipeline_hash
from tasks.registry.schema import (
    DATASET_CURSOR_END,
    DATASET_CURSOR_START,
    PIPELINE_RUN,
    Artifacts,
    RunTags,
    open_pipeline_runs_filter,
)
from tasks.store import redact


def experiment_id(client: MlflowClient, artifact_location: str | None, name: str) -> str:
    """The experiment's id, created (with the embedded store's artifact location) when it does not exist."""
    if (exp := client.get_experiment_by_name(name)) is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id  # a racing run of the pipeline made it first


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


class PipelineRun:
    """The pipeline's parent run: ``open`` (create, or take over an unfinished one), then ``finish`` or ``fail``.

    One parent per pipeline, created only when a stage of it trains (a rerun that skips every stage creates
    nothing). A parent that is not FINISHED (its flow run crashed or a stage failed) is taken over by the next
    run of the same config: its ``prefect_flow_run_id`` tag moves to the new flow run, so a resumed pipeline
    is still one parent with one child per stage. A FINISHED parent is never reopened: training the same
    config again (say, after a code change made every stage new) gets a new parent run.
    """

    def __init__(self, client: MlflowClient, artifact_location: str | None, pipeline: Pipeline):
        self.client, self.pipeline = client, pipeline
        self._artifact_location = artifact_location
        self.run_id: str | None = None

    def _unfinished(self) -> str | None:
        exp = self.client.get_experiment_by_name(self.pipeline.experiment)
        if exp is None:
            return None
        found = self.client.search_runs(
            [exp.experiment_id],
            max_results=1,
            order_by=["attributes.start_time DESC"],
            filter_string=open_pipeline_runs_filter(self.pipeline.config_hash),
        )
        return found[0].info.run_id if found else None

    def open(self) -> str:
        """The parent run's id, RUNNING and tagged with this flow run; idempotent."""
        if self.run_id is not None:
            return self.run_id
        tags = RunTags(run_kind=PIPELINE_RUN, config_hash=self.pipeline.config_hash)
        flow_tag = RunTags(prefect_flow_run_id=self.pipeline.flow_run_id).to_tags()
        if (run_id := self._unfinished()) is not None:
            for key, value in flow_tag.items():
                self.client.set_tag(run_id, key, value)
            if self.client.get_run(run_id).info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
        else:
            exp = experiment_id(self.client, self._artifact_location, self.pipeline.experiment)
            all_tags = {**tags.to_tags(), **flow_tag}
            run_id = self.client.create_run(exp, run_name=self.pipeline.run_name, tags=all_tags).info.run_id
            self.client.log_text(run_id, self.pipeline.config_yaml, Artifacts.PIPELINE_CONFIG)
        self.run_id = run_id
        return run_id

    def find(self) -> str | None:
        """The open parent run's id without opening one (None: no stage of this pipeline trained)."""
        if self.run_id is None:
            self.run_id = self._unfinished()
        return self.run_id

    def finish(self) -> None:
        if self.find() is not None:
            self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self) -> None:
        if self.find() is not None:
            self.client.set_terminated(self.run_id, "FAILED")


@dataclass
class StageRunExtras:
    """What a stage run carries besides weights, params and metrics: its parent run, text artifacts, its data."""

    parent_run_id: str | None = None
    run_id: str | None = None  # the stage's run, created when its training began (monitor.py); None: create it
    tags: RunTags = field(default_factory=RunTags)  # on the run only, not on the model version
    texts: dict[str, str] = field(default_factory=dict)  # artifact path -> content
    datasets: list[DatasetInput] = field(default_factory=list)


def corpus_input(source: str, digest: str, start: int, end: int, context: str = "training") -> DatasetInput:
    """An MLflow dataset input: the corpus (a local path, by content digest) and the cursor range read from it."""
    source = redact(source)
    src = get_dataset_source_from_json(json.dumps({"uri": source}), source_type="local")
    dataset = Dataset(**MetaDataset(src, name=Path(source).name or source, digest=digest).to_dict())
    tags = {"mlflow.data.context": context, DATASET_CURSOR_START: str(start), DATASET_CURSOR_END: str(end)}
    return DatasetInput(dataset=dataset, tags=[InputTag(k, v) for k, v in tags.items()])
