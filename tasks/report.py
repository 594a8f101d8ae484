"""What a person sees after a run: a summary table, a loss-curve PNG, and both as Prefect and MLflow artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.registry import Store
from tasks.stage import StageResult, artifact_key

COLUMNS = ["stage", "layers", "params", "steps", "val loss (init)", "val loss", "wall s", "version"]


def summary_rows(results: list[StageResult]) -> list[dict[str, object]]:
    return [
        {
            "stage": r.ref.stage, "layers": r.ref.n_layers, "params": r.params, "steps": r.steps,
            "val loss (init)": round(r.val_loss_init, 4), "val loss": round(r.val_loss, 4),
            "wall s": "skipped" if r.skipped else round(r.seconds, 1), "version": r.ref.version,
        }  # fmt: skip
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
        ax.text(start, 1.0, f" stage {r.ref.stage}: {r.ref.n_layers}L", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
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


def markdown_summary(results: list[StageResult]) -> str:
    rows = summary_rows(results)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    name = results[0].ref.name
    versions = ", ".join(f"`models:/{name}/{r.ref.version}` (alias `stage-{r.ref.stage}`)" for r in results)
    return f"# {name}: staged training\n\n" + "\n".join(lines) + f"\n\nRegistered versions: {versions}\n"


def publish(results: list[StageResult], png: Path, store: Store) -> None:
    """The summary as Prefect table + markdown artifacts, and summary + plot on the last stage's MLflow run."""
    key = artifact_key(results[0].ref.name)
    md = markdown_summary(results)
    create_table_artifact(table=summary_rows(results), key=f"{key}-summary", description="Staged training summary")
    create_markdown_artifact(markdown=md, key=f"{key}-versions", description="Registered model versions")
    client = store.client()
    run_id = results[-1].ref.run_id
    client.log_artifact(run_id, str(png), "summary")
    client.log_text(run_id, md, "summary/summary.md")
