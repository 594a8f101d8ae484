"""Comparison tables: the stages of one pipeline run, and the champion history across runs.

Both go to Prefect (table artifacts) and to MLflow (markdown on the last stage's run). The
history is derived from the gate's version tags (``GateTags.promoted_at`` and ``replaced``, set only on
promotion), so it needs no extra bookkeeping and survives any number of runs.
"""

from __future__ import annotations

import math

from mlflow import MlflowClient
from prefect.artifacts import create_table_artifact

from tasks.publish.monitor import ArtifactKeys
from tasks.registry import ModelRef, Registry
from tasks.registry.schema import Artifacts, GateTags, versions_filter
from tasks.results import GateResult, StageResult

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


def stage_rows(registry: Registry, results: list[StageResult]) -> list[dict[str, object]]:
    client = registry.client()
    aliases = _aliases(client, results[0].ref.name)
    rows, prev = [], None
    for r in results:
        gated = GateTags.from_tags(client.get_model_version(r.ref.name, r.ref.version).tags)
        rows.append(
            {
                "stage": r.ref.stage,
                "version": r.ref.version,
                "layers": r.ref.n_layers,
                "params": r.params,
                "growth": r.ref.growth,
                "steps": r.steps,
                "val loss": round(r.val_loss, 4),
                "bits/byte": round(r.val_loss / math.log(2), 4),
                "Δ vs parent": "" if prev is None else round(r.val_loss - prev, 4),
                "gate": gated.decision if gated else "",
                "aliases": ", ".join(aliases.get(r.ref.version, [])),
            }
        )
        prev = r.val_loss
    return rows


def champion_history(registry: Registry, name: str, alias: str = "champion") -> list[dict[str, object]]:
    """Every promotion of ``name``, oldest first."""
    client = registry.client()
    current = str(client.get_registered_model(name).aliases.get(alias, ""))
    gated = [(ModelRef.of(v), GateTags.from_tags(v.tags)) for v in client.search_model_versions(versions_filter(name))]
    promoted = sorted(
        ((v, g) for v, g in gated if g and g.promoted_at), key=lambda p: (p[1].promoted_at, int(p[0].version))
    )
    return [
        {
            "promoted at": g.promoted_at,
            "version": v.version,
            "stage": v.stage,
            "layers": v.n_layers,
            "held-out val loss": f"{g.val_loss:.6f}",
            "replaced": g.replaced or "",
            "current": "yes" if v.version == current else "",
        }
        for v, g in promoted
    ]


def markdown_table(rows: list[dict[str, object]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows])


def publish_comparison(
    registry: Registry, results: list[StageResult], gate: GateResult | None, alias: str = "champion"
) -> str:
    """Both tables as Prefect table artifacts and as markdown on the last stage's run."""
    name = results[0].ref.name
    keys = ArtifactKeys(name)
    stages, history = stage_rows(registry, results), champion_history(registry, name, alias)
    create_table_artifact(table=stages, key=keys.stages, description="Stages of this pipeline run")
    if history:
        create_table_artifact(table=history, key=keys.champions, description=f"History of the {alias} alias")
    decision = f"\n\nGate: version {gate.version} **{gate.decision}**: {gate.reason}." if gate else ""
    past = markdown_table(history, CHAMPION_COLUMNS) if history else "No promotions yet."
    md = (
        f"# {name}: stages of this run{decision}\n\n{markdown_table(stages, STAGE_COLUMNS)}\n\n"
        f"# {name}: {alias} history\n\n{past}\n"
    )
    registry.client().log_text(results[-1].ref.run_id, md, Artifacts.COMPARISON)
    return md
