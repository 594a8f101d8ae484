"""What a person sees after a run: a summary table, a loss-curve PNG, and both as Prefect and MLflow artifacts."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections import OrderedDict
from pathlib import Path

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from tasks.publish.monitor import ArtifactKeys
from tasks.registry import Registry
from tasks.registry.schema import Artifacts, Metrics, stage_alias
from tasks.results import StageResult

COLUMNS = [
    "stage",
    "layers",
    "params",
    "steps",
    "init loss",
    "val loss",
    "wall s",
    "GPU s",
    "version",
]  # the terminal table
TABLE_COLUMNS = COLUMNS + ["tokens/s"]  # the Prefect artifacts


def summary_rows(results: list[StageResult]) -> list[dict[str, object]]:
    return [
        {
            "stage": r.ref.stage,
            "layers": r.ref.n_layers,
            "params": r.params,
            "steps": r.steps,
            "init loss": round(r.val_loss_init, 4),
            "val loss": round(r.val_loss, 4),
            "wall s": "skipped" if r.skipped else round(r.seconds, 1),
            "GPU s": "skipped" if r.skipped else round(r.gpu_seconds, 1),
            "version": r.ref.version,
            "tokens/s": round(r.tokens_per_s) if r.tokens_per_s else "",
        }
        for r in results
    ]


def gpu_seconds(results: list[StageResult]) -> tuple[float, float, int]:
    """(GPU-seconds of this run's stages, what one allocation sized for the largest stage would have held for
    the whole run, that allocation's processes): staged training holds each stage's own hardware only."""
    trained = [r for r in results if not r.skipped]
    largest = max((r.processes for r in trained), default=1)
    return sum(r.gpu_seconds for r in trained), largest * sum(r.seconds for r in trained), largest


def allocation_line(results: list[StageResult]) -> str:
    """The pipeline's GPU-seconds beside one allocation for its largest stage, in one sentence."""
    used, single, largest = gpu_seconds(results)
    share = f" ({used / single:.2f} of it)" if single else ""
    return (
        f"GPU-seconds (processes x wall): {used:.1f} for this run's stages{share}; one allocation of {largest} "
        f"process{'es' if largest > 1 else ''} held for the whole run: {single:.1f}"
    )


_PLOTS: OrderedDict[str, bytes] = OrderedDict()  # the last few PNGs drawn in this process, by their curves
_PLOTS_LOCK = threading.Lock()


def plot_losses(results: list[StageResult], path: Path) -> Path:
    """Train and validation loss against the global step, each stage shaded and labelled, as a PNG at ``path``.

    The same curves are drawn once per process: the summary's plot and the last stage's card's are one PNG
    (the card is written after the gate, on the flow's critical path; the summary beside the gate)."""
    key = hashlib.sha256(
        json.dumps(
            [(r.ref.name, r.ref.stage, r.ref.n_layers, r.ref.version, r.train_curve, r.val_curve) for r in results]
        ).encode()
    ).hexdigest()
    with _PLOTS_LOCK:
        if (png := _PLOTS.get(key)) is None:
            png = _PLOTS[key] = _draw(results)
            while len(_PLOTS) > 4:
                _PLOTS.popitem(last=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def _draw(results: list[StageResult]) -> bytes:
    """The plot's PNG. A ``Figure`` without pyplot: no global state, so cards and the summary can plot in
    parallel threads (flows/staged.py runs them beside the next stage)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.5), dpi=110)
    ax = fig.subplots()
    for i, r in enumerate(results):
        start = r.val_curve[0][0]
        end = r.train_curve[-1][0] if r.train_curve else start
        ax.axvspan(start, max(end, start + 0.5), color=f"C{i}", alpha=0.08, lw=0)
        ax.axvline(start, color="grey", lw=0.8, ls=":")
        ax.text(
            start,
            1.0,
            f" stage {r.ref.stage}: {r.ref.n_layers}L",
            transform=ax.get_xaxis_transform(),
            va="top",
            fontsize=8,
        )
        if r.train_curve:
            steps, losses = zip(*r.train_curve)
            ax.plot(steps, losses, color=f"C{i}", lw=0.6, alpha=0.5)
        steps, losses = zip(*r.val_curve)
        ax.plot(steps, losses, "o-", color=f"C{i}", ms=3, lw=1.5, label=f"val, stage {r.ref.stage} (v{r.ref.version})")
    ax.set_xlabel("step (all stages)")
    ax.set_ylabel("loss (nats per byte)")
    ax.set_title(f"{results[0].ref.name}: staged training")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def markdown_summary(results: list[StageResult], registry: Registry, pipeline_url: str | None = None) -> str:
    """The summary table and the registered versions; with an MLflow server, links to their pages."""
    rows = summary_rows(results)
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in TABLE_COLUMNS) + " |" for row in rows]
    name = results[0].ref.name

    def version(r: StageResult) -> str:
        uri = f"`models:/{name}/{r.ref.version}` (alias `{stage_alias(r.ref.stage)}`)"
        page = registry.version_page(name, r.ref.version)
        return f"[{uri}]({page})" if page else uri

    versions = ", ".join(version(r) for r in results)
    link = f"\n\nMLflow pipeline run: [{pipeline_url}]({pipeline_url})" if pipeline_url else ""
    table = "\n".join(lines) + f"\n\n{allocation_line(results)}"
    return f"# {name}: staged training\n\n{table}\n\nRegistered versions: {versions}{link}\n"


def publish_summary(
    results: list[StageResult], png: Path, registry: Registry, parent_run_id: str | None, run_name: str
) -> str:
    """The summary as Prefect table + markdown artifacts; summary + plot on the last stage's MLflow run and on
    the pipeline's parent run (``parent_run_id``; None when this run trained nothing)."""
    keys, client = ArtifactKeys(results[0].ref.name), registry.client()
    pipeline_url = None
    if parent_run_id is not None:
        pipeline_url = registry.run_page(client.get_run(parent_run_id).info.experiment_id, parent_run_id)
    md = markdown_summary(results, registry, pipeline_url)
    create_table_artifact(table=summary_rows(results), key=keys.summary, description="Staged training summary")
    create_markdown_artifact(markdown=md, key=keys.versions, description="Registered model versions")
    if pipeline_url:
        create_link_artifact(link=pipeline_url, link_text=run_name, key=keys.pipeline_run)
    if parent_run_id is not None:
        used, single, _ = gpu_seconds(results)
        client.log_metric(parent_run_id, Metrics.GPU_SECONDS, used)
        client.log_metric(parent_run_id, Metrics.GPU_SECONDS_ONE_ALLOCATION, single)
    for run_id in [results[-1].ref.run_id] + ([parent_run_id] if parent_run_id else []):
        client.log_artifact(run_id, str(png), Artifacts.SUMMARY_DIR)
        client.log_text(run_id, md, Artifacts.SUMMARY)
    return md
