"""What a person sees after a run: a summary table, a loss-curve PNG, and both as Prefect and MLflow artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from tasks.monitor import artifact_key, mlflow_server, run_url, version_url
from tasks.registry import Pipeline, Store, pipeline_run
from tasks.stage import StageResult

COLUMNS = [
    "stage",
    "layers",
    "params",
    "steps",
    "val loss (init)",
    "val loss",
    "wall s",
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
            "val loss (init)": round(r.val_loss_init, 4),
            "val loss": round(r.val_loss, 4),
            "wall s": "skipped" if r.skipped else round(r.seconds, 1),
            "version": r.ref.version,
            "tokens/s": round(r.tokens_per_s) if r.tokens_per_s else "",
        }
        for r in results
    ]


def plot_losses(results: list[StageResult], path: Path) -> Path:
    """Train and validation loss against the global step, each stage shaded and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def markdown_summary(results: list[StageResult], server: str | None = None, pipeline_url: str | None = None) -> str:
    """The summary table and the registered versions; with an MLflow server URL, links to their pages."""
    rows = summary_rows(results)
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in TABLE_COLUMNS) + " |" for row in rows]
    name = results[0].ref.name

    def version(r: StageResult) -> str:
        uri = f"`models:/{name}/{r.ref.version}` (alias `stage-{r.ref.stage}`)"
        return f"[{uri}]({version_url(server, name, r.ref.version)})" if server else uri

    versions = ", ".join(version(r) for r in results)
    link = f"\n\nMLflow pipeline run: [{pipeline_url}]({pipeline_url})" if pipeline_url else ""
    return f"# {name}: staged training\n\n" + "\n".join(lines) + f"\n\nRegistered versions: {versions}{link}\n"


def publish(results: list[StageResult], png: Path, store: Store, pipeline: Pipeline | None = None) -> None:
    """The summary as Prefect table + markdown artifacts; summary + plot on the last stage's MLflow run and on
    the pipeline's parent run, which is then FINISHED (a rerun that trained nothing has none: nothing is logged)."""
    key = artifact_key(results[0].ref.name)
    client, server = store.client(), mlflow_server(store.tracking_uri)
    parent = pipeline_run(store, pipeline, create=False) if pipeline else None
    pipeline_url = run_url(server, client.get_run(parent).info.experiment_id, parent) if server and parent else None
    md = markdown_summary(results, server, pipeline_url)
    create_table_artifact(table=summary_rows(results), key=f"{key}-summary", description="Staged training summary")
    create_markdown_artifact(markdown=md, key=f"{key}-versions", description="Registered model versions")
    if pipeline_url:
        create_link_artifact(link=pipeline_url, link_text=pipeline.run_name, key=f"{key}-pipeline-run")
    for run_id in [results[-1].ref.run_id] + ([parent] if parent else []):
        client.log_artifact(run_id, str(png), "summary")
        client.log_text(run_id, md, "summary/summary.md")
    if parent:
        client.set_terminated(parent, "FINISHED")
