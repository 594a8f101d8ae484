"""A model card per version: what it is, how it came to be, how good it is.

Written after a stage is registered (the card needs the version number): ``card/MODEL_CARD.md``
and ``card/loss.png`` on the stage's run, the card as the version's description (the MLflow UI
shows it on the version page), and tags ``model_card``, ``git_commit`` and ``data_config``.
Lineage is read back from the registry (``parent_version`` tags), so a card is complete even when
earlier stages were skipped as already registered.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from models.data import DataConfig
from tasks.gate import GateResult
from tasks.registry import Store
from tasks.report import plot_losses
from tasks.stage import StageResult

_DESCRIPTION_MAX = 4500  # MLflow keeps at most 5000 characters of a version description


def git_commit() -> str:
    """The commit this code was checked out at, with ``-dirty`` for local changes; ``unknown`` outside git."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def lineage(client: MlflowClient, mv: ModelVersion) -> list[ModelVersion]:
    """The version and its ancestors through ``parent_version`` tags, root first."""
    chain = [mv]
    while parent := chain[-1].tags.get("parent_version"):
        chain.append(client.get_model_version(mv.name, parent))
    return chain[::-1]


def _steps(client: MlflowClient, mv: ModelVersion) -> str:
    return client.get_run(mv.run_id).data.params.get("steps", "?")


def card_markdown(
    client: MlflowClient, mv: ModelVersion, result: StageResult, gate: GateResult | None, commit: str
) -> str:
    t = mv.tags
    params = client.get_run(mv.run_id).data.params
    chain = lineage(client, mv)
    parent_cursor = int(chain[-2].tags["data_cursor"]) if len(chain) > 1 else 0
    context, batch = int(params["context"]), int(params["train.batch_size"])
    cursor = int(t["data_cursor"])
    rows = ["| version | stage | layers | operator | steps | val loss |", "|---|---|---|---|---|---|"]
    rows += [
        f"| {v.version} | {v.tags['stage']} | {v.tags['n_layers']} | {v.tags.get('growth', '?')} | {_steps(client, v)} | {v.tags.get('val_loss', '?')} |"
        for v in chain
    ]
    gate_lines = "Not gated."
    if gate is not None:
        gate_lines = (
            f"**{gate.decision}** ({gate.reason}); held-out val loss {gate.candidate.val_loss:.4f}, "
            f"{gate.candidate.bpb:.4f} bits/byte over {gate.candidate.tokens} bytes.\n\n```\n{gate.candidate.sample.replace('```', chr(39) * 3)}\n```"
        )
    return f"""# {mv.name} version {mv.version}: stage {t["stage"]}, {t["n_layers"]} layers

## Architecture
Byte-level decoder-only transformer (models/gpt.py): {params["n_layers"]} layers, d_model {params["d_model"]},
{params["n_heads"]} heads, d_ff {params["d_ff"]}, context {context} bytes, vocabulary 256 bytes.
**{result.params:,} parameters.**

## How it came to be
| | |
|---|---|
| growth from parent | {t.get("growth", "?")} (parent version {t.get("parent_version") or "none"}) |
| steps this stage / all stages | {result.steps} / {t["global_step"]} |
| data cursor (sequences) | {parent_cursor} → {cursor} |
| tokens (bytes) this stage / all stages | {(cursor - parent_cursor) * context:,} / {cursor * context:,} (batch {batch}) |
| config hash | `{t.get("config_hash", "?")}` |
| code version (models/ hash) | `{t.get("code_version", "?")}` |
| git commit | `{commit}` |

Lineage, root first:

{chr(10).join(rows)}

## Metrics
Validation loss {result.val_loss_init:.4f} → {result.val_loss:.4f} nats/byte over this stage.

Gate: {gate_lines}

## Loss across all stages so far
![loss curve](loss.png)

Use it: `staged generate models:/{mv.name}/{mv.version} --prompt "def "`, or
`mlflow.pyfunc.load_model("models:/{mv.name}/{mv.version}")`.
"""


def write_card(store: Store, results: list[StageResult], data: DataConfig, gate: GateResult | None = None) -> str:
    """Card for ``results[-1]`` (curves: every stage in ``results``); returns its markdown."""
    client = store.client()
    ref = results[-1].ref
    mv = client.get_model_version(ref.name, ref.version)
    commit = mv.tags.get("git_commit") or git_commit()  # the commit that trained it, not one that re-ran the flow
    md = card_markdown(client, mv, results[-1], gate, commit)
    with tempfile.TemporaryDirectory(prefix="staged-card-") as tmp:
        png = plot_losses(results, Path(tmp) / "loss.png")
        client.log_artifact(ref.run_id, str(png), "card")
    client.log_text(ref.run_id, md, "card/MODEL_CARD.md")
    run = client.get_run(ref.run_id)
    tags = {
        "model_card": f"{run.info.artifact_uri}/card/MODEL_CARD.md",
        "git_commit": commit,
        "data_config": data.model_dump_json(),
    }
    for key, value in tags.items():
        client.set_model_version_tag(ref.name, ref.version, key, value)
    description = md if len(md) <= _DESCRIPTION_MAX else md[:_DESCRIPTION_MAX] + "\n\n… (full card: card/MODEL_CARD.md)"
    client.update_model_version(ref.name, ref.version, description=description)
    return md
