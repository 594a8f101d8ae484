"""What a person watching the Prefect and MLflow UIs sees of a pipeline while it runs.

    Prefect                                         MLflow (experiment = the model name)
    flow run  <model>-<config hash>, tag <model>    parent run  <model>-<config hash>
      task run stage-<k>-<n>L                         nested run  stage-<k>  (one per registered stage)
        <model>-stage-<k>          progress (live)
        <model>-stage-<k>-summary  markdown
        <model>-stage-<k>-run / -version  links (MLflow server only)
        <model>-failure            markdown, when a stage fails

Artifact keys depend on the model name only, so the UI shows each key's history across runs.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.runtime import flow_run, task_run

from models.data import ByteCorpus, stdlib_dir
from models.train import NonFiniteLoss, StepInfo
from tasks import checkpoint
from tasks.config import StageSpec
from tasks.registry import ModelRef, Pipeline, StageRunExtras, Store, corpus_input, end_pipeline_run, pipeline_run
from tasks.storage import Storage

if TYPE_CHECKING:
    from tasks.stage import StageResult

log = logging.getLogger(__name__)


def artifact_key(model_name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]", "-", model_name.lower())


def tag_flow_run(*tags: str) -> None:
    """Add tags to the current flow run (the Prefect UI filters flow runs by them). Prefect sets a flow
    run's tags when it is created, from ``prefect.tags()`` around the call or the deployment; this adds to them."""
    from prefect.client.orchestration import get_client

    if flow_run.id is None:
        return
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(flow_run.id).tags
        if missing := [t for t in tags if t not in current]:
            client.update_flow_run(flow_run.id, tags=[*current, *missing])


def mlflow_server(tracking_uri: str) -> str | None:
    """The MLflow UI's base URL when the tracking URI is an http(s) server; None for an embedded store."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else None


def run_url(server: str, experiment_id: str, run_id: str) -> str:
    return f"{server}/#/experiments/{experiment_id}/runs/{run_id}"


def version_url(server: str, name: str, version: str) -> str:
    return f"{server}/#/models/{name}/versions/{version}"


def corpus_digest(corpus: ByteCorpus) -> str:
    """sha256 of the exact train and validation bytes a stage read."""
    h = hashlib.sha256(corpus.train.numpy())
    h.update(corpus.val.numpy())
    return h.hexdigest()


def stage_markdown(result: StageResult, parent_val_loss: str | None, links: dict[str, str]) -> str:
    r = result
    before = f"{float(parent_val_loss):.4f}" if parent_val_loss else "none (first stage)"
    rows = {
        "layers": r.ref.n_layers,
        "parameters": f"{r.params:,}",
        "steps": f"{r.steps}" + (f" (resumed from step {r.resumed_from})" if r.resumed_from else ""),
        "tokens (bytes)": f"{r.tokens:,}",
        "val loss before growth (parent)": before,
        "val loss after growth": f"{r.val_loss_init:.4f}",
        "val loss after training": f"{r.val_loss:.4f}",
        "wall time": f"{r.seconds:.1f} s",
        "throughput": f"{r.tokens_per_s:,.0f} tokens/s" if r.tokens_per_s else "n/a",
        "model version": f"`models:/{r.ref.name}/{r.ref.version}` (alias `stage-{r.ref.stage}`)",
        "MLflow run": f"`{r.ref.run_id}`",
    }
    rows |= {k: f"[{k}]({url})" for k, url in links.items()}
    table = "\n".join(f"| {k} | {v} |" for k, v in rows.items())
    return f"# {r.ref.name} stage {r.ref.stage}: {r.ref.n_layers} layers, version {r.ref.version}\n\n| | |\n|---|---|\n{table}\n"


def failure_markdown(
    spec: StageSpec, error: BaseException, phase: str, step: int, checkpoints: list[int], where: str
) -> str:
    """What failed, in which stage, phase and step, and which checkpoint a rerun resumes from (``where``: its prefix)."""
    at = (
        f"at step {error.step}"
        if isinstance(error, NonFiniteLoss)
        else f"after step {step}"
        if step
        else "before the first step"
    )
    message = (str(error).splitlines() or [""])[0].replace("|", "\\|")  # one line, and no table cell breaks
    kept = f"step {checkpoints[-1]} (`{where}/step-{checkpoints[-1]:08d}`)" if checkpoints else "none written"
    rows = {
        "what failed": f"`{type(error).__name__}`: {message}",
        "stage": f"{spec.index} ({spec.model.n_layers} layers)",
        "while": phase,
        "step": f"{at} of {spec.train.steps}",
        "last good checkpoint": kept,
        "attempt": str(task_run.run_count or 1),
        "flow run": f"`{flow_run.id}`",
    }
    table = "\n".join(f"| {k} | {v} |" for k, v in rows.items())
    resume = "A rerun of the same command resumes from it." if checkpoints else "A rerun starts the stage over."
    return f"# {spec.model_name}: stage {spec.index} FAILED\n\n| | |\n|---|---|\n{table}\n\n{resume}\n"


def complete_checkpoints(storage: Storage, key: str) -> list[int]:
    """Steps whose checkpoint has its manifest (written last), oldest first."""
    names = set(storage.list(f"{key}/"))
    return [s for s in checkpoint.steps(storage, key) if f"{key}/step-{s:08d}/{checkpoint.MANIFEST}" in names]


class StageWatch:
    """One training stage as the UIs show it: its MLflow parent run, step times, its end-of-stage summary,
    and, used as ``with watch.during("training"):``, a failure report (the exception then propagates)."""

    def __init__(
        self,
        spec: StageSpec,
        store: Store,
        pipeline: Pipeline | None,
        storage: Storage,
        key: str,
        parent: ModelRef | None,
    ):
        self.spec, self.store, self.pipeline, self.parent = spec, store, pipeline, parent
        self.storage, self.key = storage, key  # the stage's checkpoints
        self.parent_run_id = pipeline_run(store, pipeline, create=True) if pipeline else None
        self.step, self.phase = 0, "starting"
        self.step_times: list[tuple[int, float]] = []  # (stage step, seconds), evaluation steps included
        self._last: float | None = None

    def observe(self, forward: Callable[[StepInfo], None]) -> Callable[[StepInfo], None]:
        """An ``on_step`` callback that times each step, then calls ``forward`` (the progress bar)."""

        def on_step(info: StepInfo) -> None:
            now = time.perf_counter()
            if self._last is not None:  # the first step also carries the initial evaluation: not a step time
                self.step_times.append((info.step, now - self._last))
            self._last, self.step = now, info.step
            forward(info)

        return on_step

    def during(self, phase: str) -> StageWatch:
        self.phase = phase
        return self

    def __enter__(self) -> StageWatch:
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if isinstance(error, Exception):
            try:
                self._report_failure(error)
            except Exception as e:  # never hide the stage's own error behind a reporting one
                log.warning("could not report the failure of stage %d: %s", self.spec.index, e)
        return False

    def _report_failure(self, error: Exception) -> None:
        kept = complete_checkpoints(self.storage, self.key)
        md = failure_markdown(self.spec, error, self.phase, self.step, kept, f"{self.storage.uri}/{self.key}")
        key = f"{artifact_key(self.spec.model_name)}-failure"
        create_markdown_artifact(markdown=md, key=key, description=f"Stage {self.spec.index} failed")
        if self.parent_run_id is not None:
            self.store.client().log_text(self.parent_run_id, md, f"failures/stage-{self.spec.index}.md")
            end_pipeline_run(self.store, self.pipeline, "FAILED")

    def extras(self, corpus: ByteCorpus, start: int, end: int) -> StageRunExtras:
        """The stage run's parent, Prefect ids, resolved config and data (corpus digest, cursor range)."""
        source = str(Path(self.spec.data.source).resolve()) if self.spec.data.source else str(stdlib_dir())
        digest = corpus_digest(corpus)
        return StageRunExtras(
            parent_run_id=self.parent_run_id,
            tags={"prefect_flow_run_id": str(flow_run.id or ""), "prefect_task_run_id": str(task_run.id or "")},
            texts={"config/stage.yaml": yaml.safe_dump(self.spec.model_dump(mode="json"), sort_keys=False)},
            params={
                "data.source": source,
                "data.corpus_sha256": digest,
                "data.cursor_start": start,
                "data.cursor_end": end,
            },
            datasets=[corpus_input(source, digest[:16], start, end)],
        )

    def publish(self, result: StageResult) -> None:
        """The end-of-stage summary artifact, and links to the MLflow run and version pages on a server."""
        client, ref, key = (
            self.store.client(),
            result.ref,
            f"{artifact_key(self.spec.model_name)}-stage-{self.spec.index}",
        )
        before = client.get_model_version(ref.name, self.parent.version).tags.get("val_loss") if self.parent else None
        links = {}
        if server := mlflow_server(self.store.tracking_uri):
            links["MLflow run page"] = run_url(server, client.get_run(ref.run_id).info.experiment_id, ref.run_id)
            links["model version page"] = version_url(server, ref.name, ref.version)
            create_link_artifact(link=links["MLflow run page"], link_text=f"stage-{ref.stage} run", key=f"{key}-run")
            create_link_artifact(
                link=links["model version page"], link_text=f"{ref.name} v{ref.version}", key=f"{key}-version"
            )
        md = stage_markdown(result, before, links)
        create_markdown_artifact(markdown=md, key=f"{key}-summary", description=f"Stage {ref.stage} summary")
