"""Comparison tables: the stages of one pipeline run, and the champion history across runs.

Both go to Prefect (table artifacts) and to MLflow (markdown on the last stage's run). The
history is derived from version tags (``gate_promoted_at``, ``gate_replaced``: set only on promotion), so it needs
no extra bookkeeping and survives any number of runs.
"""

from __future__ import annotations

import math

from mlflow import MlflowClient
from prefect.artifacts import create_table_artifact

from tasks.gate import GateResult
from tasks.registry import Store
from tasks.stage import StageResult, artifact_key

STAGE_COLUMNS = [
    "stage",
    "version",
    "layers",
    "params",
    "growth",
    "steps",
    "val loss",
    "bits/byte",
    "Δ vs parent",
    "gate",
    "aliases",
]
CHAMPION_COLUMNS = ["promoted at", "version", "stage", "layers", "held-out val loss", "replaced", "current"]


def _aliases(client: MlflowClient, name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for alias, version in sorted(client.get_registered_model(name).aliases.items()):
        out.setdefault(str(version), []).append(alias)
    return out


def stage_rows(store: Store, results: list[StageResult]) -> list[dict[str, object]]:
    client = store.client()
    aliases = _aliases(client, results[0].ref.name)
    rows, prev = [], None
    for r in results:
        tags = client.get_model_version(r.ref.name, r.ref.version).tags
        rows.append(
            {
                "stage": r.ref.stage,
                "version": r.ref.version,
                "layers": r.ref.n_layers,
                "params": r.params,
                "growth": tags.get("growth", ""),
                "steps": r.steps,
                "val loss": round(r.val_loss, 4),
                "bits/byte": round(r.val_loss / math.log(2), 4),
                "Δ vs parent": "" if prev is None else round(r.val_loss - prev, 4),
                "gate": tags.get("gate_decision", ""),
                "aliases": ", ".join(aliases.get(r.ref.version, [])),
            }
        )
        prev = r.val_loss
    return rows


def champion_history(store: Store, name: str, alias: str = "champion") -> list[dict[str, object]]:
    """Every promotion of ``name``, oldest first."""
    client = store.client()
    current = str(client.get_registered_model(name).aliases.get(alias, ""))
    promoted = [v for v in client.search_model_versions(f"name = '{name}'") if v.tags.get("gate_promoted_at")]
    promoted.sort(key=lambda v: (v.tags["gate_promoted_at"], int(v.version)))
    return [
        {
            "promoted at": v.tags["gate_promoted_at"],
            "version": str(v.version),
            "stage": v.tags.get("stage", ""),
            "layers": v.tags.get("n_layers", ""),
            "held-out val loss": v.tags.get("gate_val_loss", ""),
            "replaced": v.tags.get("gate_replaced", ""),
            "current": "yes" if str(v.version) == current else "",
        }
        for v in promoted
    ]


def markdown_table(rows: list[dict[str, object]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows])


def publish_comparison(
    store: Store, results: list[StageResult], gate: GateResult | None, alias: str = "champion"
) -> str:
    """Both tables as Prefect table artifacts and as ``compare/comparison.md`` on the last stage's run."""
    name = results[0].ref.name
    key = artifact_key(name)
    stages, history = stage_rows(store, results), champion_history(store, name, alias)
    create_table_artifact(table=stages, key=f"{key}-stages", description="Stages of this pipeline run")
    if history:
        create_table_artifact(table=history, key=f"{key}-champions", description=f"History of the {alias} alias")
    decision = f"\n\nGate: version {gate.version} **{gate.decision}**: {gate.reason}." if gate else ""
    md = (
        f"# {name}: stages of this run{decision}\n\n{markdown_table(stages, STAGE_COLUMNS)}\n\n"
        f"# {name}: {alias} history\n\n{markdown_table(history, CHAMPION_COLUMNS) if history else 'No promotions yet.'}\n"
    )
    store.client().log_text(results[-1].ref.run_id, md, "compare/comparison.md")
    return md
