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

from models.data.bytes import DataConfig
from models.families.lookup import family_of, parse_config
from tasks.publish.report import plot_losses
from tasks.registry import ModelRef, Registry
from tasks.registry.schema import Artifacts, CardTags, StageParams, stage_alias
from tasks.results import GateResult, StageResult
from tasks.store import redact

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


def lineage(client: MlflowClient, ref: ModelRef) -> list[tuple[ModelRef, StageParams]]:
    """The version and its ancestors through their ``parent_version`` tags, root first, with their runs' params.
    A cycle in the tags (a tampered registry) is an error, not an endless loop."""
    chain = [ref]
    while (parent := chain[-1].parent_version) is not None:
        if any(r.version == parent for r in chain):
            raise ValueError(f"model {ref.name!r}: the lineage of version {ref.version} loops at version {parent}")
        chain.append(ModelRef.of(client.get_model_version(ref.name, parent)))
    return [(r, StageParams.read(client.get_run(r.run_id).data.params)) for r in chain[::-1]]


def architecture(m: dict[str, str], tokenizer_sha256: str | None) -> str:
    """The card's architecture line, from the stage run's logged model params (MLflow keeps them as strings)."""
    cfg = parse_config({k: None if v == "None" else v for k, v in m.items()})
    family = family_of(cfg)
    vocab = f"byte-level BPE `{tokenizer_sha256[:12]}`" if tokenizer_sha256 else "256 bytes"
    return f"{family.describe(cfg)}; vocabulary {family.vocab_size(cfg)} ({vocab})."


def card_markdown(
    client: MlflowClient, ref: ModelRef, result: StageResult, gate: GateResult | None, commit: str
) -> str:
    chain = lineage(client, ref)
    params = chain[-1][1]
    parent_cursor = chain[-2][0].data_cursor if len(chain) > 1 else 0
    context, batch = int(params.model["context"]), int(params.train["batch_size"])
    cursor = ref.data_cursor
    rows = ["| version | stage | layers | operator | steps | val loss | layer map |", "|---|---|---|---|---|---|---|"]
    rows += [
        f"| {v.version} | {v.stage} | {v.n_layers} | {v.growth} | {p.steps} | {v.val_loss:.6f} | {v.layer_map or ''} |"
        for v, p in chain
    ]
    gate_lines = "Not gated."
    if gate is not None:
        c = gate.candidate
        sample = c.sample.replace("```", chr(39) * 3)
        per_token = f", {c.bpt:.4f} bits/token" if c.bpt is not None else ""
        gate_lines = (
            f"**{gate.decision}** ({gate.reason}); held-out val loss {c.val_loss:.4f}, "
            f"{c.bpb:.4f} bits/byte{per_token} over {c.tokens} tokens.\n\n```\n{sample}\n```"
        )
    tokens_stage, tokens_all = (cursor - parent_cursor) * context, cursor * context
    return f"""# {ref.name} version {ref.version}: stage {ref.stage}, {ref.n_layers} layers

## Architecture
{architecture(params.model, ref.tokenizer_sha256)}
**{result.params:,} parameters.**

## How it came to be
| | |
|---|---|
| growth from parent | {ref.growth} (parent version {ref.parent_version or "none"}) |
| layer map (parent block of each block, new copies starred) | {ref.layer_map or "none"} |
| trained (growth.freeze) | {ref.trained or "everything"} |
| steps this stage / all stages | {result.steps} / {ref.global_step} |
| data cursor (sequences) | {parent_cursor} → {cursor} |
| tokens this stage / all stages | {tokens_stage:,} / {tokens_all:,} (batch {batch}) |
| config hash | `{ref.config_hash}` |
| code version (models/ hash) | `{ref.code_version}` |
| git commit | `{commit}` |

Lineage, root first:

{chr(10).join(rows)}

## Metrics
Validation loss {result.val_loss_init:.4f} → {result.val_loss:.4f} nats/token over this stage.

Gate: {gate_lines}

## Loss across all stages so far
![loss curve](loss.png)

Use it: `staged generate models:/{ref.name}/{ref.version} --prompt "def "`, or
`mlflow.pyfunc.load_model("models:/{ref.name}/{ref.version}")` (alias `{stage_alias(ref.stage)}`).
"""


def write_card(registry: Registry, results: list[StageResult], data: DataConfig, gate: GateResult | None = None) -> str:
    """Card for ``results[-1]`` (curves: every stage in ``results``); returns its markdown."""
    client = registry.client()
    ref = results[-1].ref
    earlier = CardTags.from_tags(client.get_model_version(ref.name, ref.version).tags)
    commit = earlier.git_commit if earlier else git_commit()  # the commit that trained it, not a rerun's
    md = card_markdown(client, ref, results[-1], gate, commit)
    with tempfile.TemporaryDirectory(prefix="staged-card-") as tmp:
        png = plot_losses(results, Path(tmp) / "loss.png")
        client.log_artifact(ref.run_id, str(png), Artifacts.CARD_DIR)
    client.log_text(ref.run_id, md, Artifacts.CARD)
    uri = redact(f"{client.get_run(ref.run_id).info.artifact_uri}/{Artifacts.CARD}")
    for key, value in CardTags(model_card=uri, git_commit=commit, data_config=data.model_dump_json()).to_tags().items():
        client.set_model_version_tag(ref.name, ref.version, key, value)
    more = f"\n\n… (full card: {Artifacts.CARD})"
    description = md if len(md) <= _DESCRIPTION_MAX else md[:_DESCRIPTION_MAX] + more
    client.update_model_version(ref.name, ref.version, description=description)
    return md


_SCORES = "## Downstream tasks"


def scores_markdown(scores: dict[str, dict[str, float]]) -> str:
    rows = [f"| `{t}` | {m} | {v:.4g} |" for t, row in sorted(scores.items()) for m, v in sorted(row.items())]
    return (
        f"{_SCORES}\n(lm-evaluation-harness: `staged eval --tasks`)\n\n| task | metric | value |\n|---|---|---|\n"
        + ("\n".join(rows) + "\n")
    )


def add_scores(registry: Registry, name: str, version: str, run_id: str, scores: dict[str, dict[str, float]]) -> None:
    """The card of a version with its downstream scores (every one on its run, this call's included)."""
    from tasks.registry import read_scores

    client = registry.client()
    with tempfile.TemporaryDirectory(prefix="staged-card-") as tmp:
        # a version registered without a card (a test's, an import's before its card) starts one; any other
        # failure to read the card is raised, never hidden behind a card that lost its content
        if any(f.path == Artifacts.CARD for f in client.list_artifacts(run_id, Artifacts.CARD_DIR)):
            md = Path(client.download_artifacts(run_id, Artifacts.CARD, tmp)).read_text()
        else:
            md = f"# {name} version {version}\n"
    md = md.split(_SCORES)[0].rstrip("\n") + "\n\n" + scores_markdown({**read_scores(registry, run_id), **scores})
    client.log_text(run_id, md, Artifacts.CARD)
    more = f"\n\n… (full card: {Artifacts.CARD})"
    client.update_model_version(name, version, description=md if len(md) <= _DESCRIPTION_MAX else md[:4500] + more)
