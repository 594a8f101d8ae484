"""What a person watching the Prefect UI (and the terminal) sees of a stage while it runs.

    Prefect                                         MLflow (experiment = the model name)
    flow run  <model>-<config hash>, tag <model>    parent run  <model>-<config hash>
      task run stage-<k>-<n>L                         nested run  stage-<k>  (one per registered stage)
        <model>-stage-<k>          progress (live)
        <model>-stage-<k>-summary  markdown
        <model>-stage-<k>-run / -version  links (MLflow server only)
        <model>-failure            markdown, when a stage fails

Artifact keys depend on the model name only, so the UI shows each key's history across runs;
:class:`ArtifactKeys` is the one place they are spelled.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run, task_run
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from models.train.loop import NonFiniteLoss
from models.train.plan import StepInfo
from tasks.config import StageSpec
from tasks.registry import ModelRef, Registry, schema
from tasks.results import StageResult
from tasks.store import Storage, checkpoint, redact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArtifactKeys:
    """The Prefect artifact keys of one registered model (lowercase letters, digits and dashes only)."""

    model_name: str

    @property
    def base(self) -> str:
        return re.sub(r"[^a-z0-9-]", "-", self.model_name.lower())

    def stage(self, k: int) -> str:
        """Stage k's live progress; ``-summary`` (markdown), ``-run`` and ``-version`` (links) beside it."""
        return f"{self.base}-stage-{k}"

    def stage_summary(self, k: int) -> str:
        return f"{self.stage(k)}-summary"

    def stage_run(self, k: int) -> str:
        return f"{self.stage(k)}-run"

    def stage_version(self, k: int) -> str:
        return f"{self.stage(k)}-version"

    @property
    def failure(self) -> str:
        return f"{self.base}-failure"

    @property
    def gate(self) -> str:
        return f"{self.base}-gate"

    @property
    def summary(self) -> str:  # the flow's table
        return f"{self.base}-summary"

    @property
    def versions(self) -> str:  # the flow's markdown
        return f"{self.base}-versions"

    @property
    def pipeline_run(self) -> str:  # link to the MLflow parent run (server only)
        return f"{self.base}-pipeline-run"

    @property
    def stages(self) -> str:  # comparison tables
        return f"{self.base}-stages"

    @property
    def champions(self) -> str:
        return f"{self.base}-champions"


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


def _table(rows: dict[str, object]) -> str:
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows.items())


def stage_markdown(result: StageResult, parent_val_loss: float | None, links: dict[str, str]) -> str:
    r = result
    before = f"{parent_val_loss:.4f}" if parent_val_loss is not None else "none (first stage)"
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
        "model version": f"`models:/{r.ref.name}/{r.ref.version}` (alias `{schema.stage_alias(r.ref.stage)}`)",
        "MLflow run": f"`{r.ref.run_id}`",
    }
    rows |= {k: f"[{k}]({url})" for k, url in links.items()}
    title = f"# {r.ref.name} stage {r.ref.stage}: {r.ref.n_layers} layers, version {r.ref.version}"
    return f"{title}\n\n{_table(rows)}\n"


def failure_markdown(spec: StageSpec, error: BaseException, phase: str, step: int, kept: str | None) -> str:
    """What failed, in which stage, phase and step, and which checkpoint (``kept``: step and where) a rerun uses."""
    error = getattr(error, "cause", None) or error  # a StageFailed reports what made the stage fail
    if isinstance(error, NonFiniteLoss):
        at = f"at step {error.step}"
    else:
        at = f"after step {step}" if step else "before the first step"
    message = redact((str(error).splitlines() or [""])[0]).replace("|", "\\|")  # one line, no cell breaks
    rows = {
        "what failed": f"`{type(error).__name__}`: {message}",
        "stage": f"{spec.index} ({spec.model.n_layers} layers)",
        "while": phase,
        "step": f"{at} of {spec.train.steps}",
        "last good checkpoint": kept or "none written",
        "attempt": str(task_run.run_count or 1),
        "flow run": f"`{flow_run.id}`",
    }
    resume = "A rerun of the same command resumes from it." if kept else "A rerun starts the stage over."
    return f"# {spec.model_name}: stage {spec.index} FAILED\n\n{_table(rows)}\n\n{resume}\n"


class StageProgress:
    """A terminal progress bar and a Prefect progress artifact for one stage. The bar appears at the
    first step reported: a resumed stage's bar starts at its checkpoint. The artifact's API calls run beside
    the training, in order; leaving the ``with`` block waits for them (and raises the first that failed)."""

    def __init__(self, spec: StageSpec):
        self.bar = Progress(
            TextColumn(f"stage {spec.index} ({spec.model.n_layers}L)"),
            BarColumn(),
            TextColumn(
                "{task.completed}/{task.total} steps  loss {task.fields[loss]:.3f}  {task.fields[tps]:,.0f} tok/s"
            ),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.task = None
        self.every = max(1, spec.train.steps // 20)  # artifact updates: ~5% apart
        # the artifact's calls to the Prefect API (~15 ms each, ~20 a stage) run in order on a thread of their
        # own, in this task run's context, so the training loop never waits for them; __exit__ waits for the last
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stage-{spec.index}-progress")
        self._context = contextvars.copy_context()
        self._sent: list[Future] = []
        self._artifact = self._send(
            create_progress_artifact,
            progress=0.0,
            key=ArtifactKeys(spec.model_name).stage(spec.index),
            description=f"Training stage {spec.index} ({spec.model.n_layers} layers)",
        )

    def _send(self, call: Callable, *args, **kwargs) -> Future:
        self._sent.append(self._sender.submit(self._context.run, call, *args, **kwargs))
        return self._sent[-1]

    def _update(self, progress: float) -> None:
        update_progress_artifact(self._artifact.result(), progress=progress)

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, kind, error, tb) -> None:
        self.bar.stop()
        self._sender.shutdown(wait=True)  # every update sent before the stage goes on (its summary, registration)
        failed = next((e for f in self._sent if (e := f.exception()) is not None), None)
        if failed is not None and error is None:  # the stage's own error first; else the API's, as before
            raise failed

    def __call__(self, info: StepInfo) -> None:
        if self.task is None:
            self.task = self.bar.add_task(
                "train", total=info.steps, completed=info.step - 1, loss=float("nan"), tps=0.0
            )
            self.bar.start()
        self.bar.update(self.task, completed=info.step, loss=info.train_loss, tps=info.tokens_per_s)
        if info.step % self.every == 0 or info.step == info.steps:
            self._send(self._update, 100.0 * info.step / info.steps)


class StageWatch:
    """One training stage as the UIs show it: step times, its end-of-stage summary, and, used as
    ``with watch.during("training"):``, a failure report in Prefect and on the pipeline's parent run
    (the exception then propagates: the flow fails the parent run)."""

    def __init__(self, spec: StageSpec, registry: Registry, parent_run_id: str | None, storage: Storage, key: str):
        self.spec, self.registry, self.parent_run_id = spec, registry, parent_run_id
        self.storage, self.key = storage, key  # the stage's checkpoints
        self.step, self.phase = 0, "starting"
        self.step_times: list[tuple[int, float]] = []  # (stage step, seconds), evaluation steps included
        self.phase_seconds: dict[str, float] = {}  # wall time of each ``during`` phase and ``timed`` part
        self._last: float | None = None
        self._began = 0.0
        self.created = time.perf_counter()  # the stage's start: its wall time so far is elapsed()

    def elapsed(self) -> float:
        return time.perf_counter() - self.created

    def observe(self, forward: Callable[[StepInfo], None]) -> Callable[[StepInfo], None]:
        """An ``on_step`` callback that times each step, then calls ``forward`` (the progress bar)."""

        def on_step(info: StepInfo) -> None:
            now = time.perf_counter()
            if self._last is not None:  # the first step also carries the initial evaluation: not a step time
                self.step_times.append((info.step, now - self._last))
            self._last, self.step = now, info.step
            forward(info)

        return on_step

    def _add(self, part: str, seconds: float) -> None:
        self.phase_seconds[part] = self.phase_seconds.get(part, 0.0) + seconds

    @contextmanager
    def timed(self, part: str) -> Iterator[None]:
        """Time a part of a phase (e.g. the parent's load inside "loading and growing the parent"); no report."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self._add(part, time.perf_counter() - began)

    def during(self, phase: str) -> StageWatch:
        self.phase = phase
        return self

    def __enter__(self) -> StageWatch:
        self._began = time.perf_counter()
        return self

    def __exit__(self, kind, error, tb) -> bool:
        self._add(self.phase, time.perf_counter() - self._began)
        if isinstance(error, Exception):
            try:
                self._report_failure(error)
            except Exception as e:  # never hide the stage's own error behind a reporting one
                log.warning("could not report the failure of stage %d: %s", self.spec.index, e)
        return False

    def _report_failure(self, error: Exception) -> None:
        steps = checkpoint.complete(self.storage, self.key)
        where = redact(checkpoint.location(self.storage, self.key, steps[-1])) if steps else ""
        kept = f"step {steps[-1]} (`{where}`)" if steps else None
        md = failure_markdown(self.spec, error, self.phase, self.step, kept)
        key = ArtifactKeys(self.spec.model_name).failure
        create_markdown_artifact(markdown=md, key=key, description=f"Stage {self.spec.index} failed")
        if self.parent_run_id is not None:
            self.registry.client().log_text(self.parent_run_id, md, schema.Artifacts.failure(self.spec.index))

    def publish(self, result: StageResult, parent: ModelRef | None) -> None:
        """The end-of-stage summary artifact, and links to the MLflow run and version pages on a server."""
        ref, keys = result.ref, ArtifactKeys(self.spec.model_name)
        links = {}
        if self.registry.server:
            experiment = self.registry.client().get_run(ref.run_id).info.experiment_id
            links["MLflow run page"] = self.registry.run_page(experiment, ref.run_id)
            links["model version page"] = self.registry.version_page(ref.name, ref.version)
            run_text, version_text = f"{schema.stage_run_name(ref.stage)} run", f"{ref.name} v{ref.version}"
            create_link_artifact(link=links["MLflow run page"], link_text=run_text, key=keys.stage_run(ref.stage))
            create_link_artifact(
                link=links["model version page"], link_text=version_text, key=keys.stage_version(ref.stage)
            )
        md = stage_markdown(result, parent.val_loss if parent else None, links)
        summary = keys.stage_summary(ref.stage)
        create_markdown_artifact(markdown=md, key=summary, description=f"Stage {ref.stage} summary")
