"""The evaluation gate: may a new version become the champion?

The candidate and the current champion are evaluated now, on the same held-out set (fixed
validation batches of this pipeline's corpus, which training never reads), so the comparison is
fair even when the champion came from another run. The candidate is promoted only if it beats the
champion by more than ``gate.margin``. Either way the decision and the figures are written to the
candidate's version tags, to its run (``gate/gate.md``) and to a Prefect markdown artifact: a
refusal leaves the alias where it was and says so.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger
from pydantic import BaseModel

from models.data import ByteCorpus, DataConfig
from models.gpt import GPT
from models.sample import decode, generate
from models.train import evaluate
from tasks.config import GateConfig
from tasks.lookup import load_model
from tasks.registry import ModelRef, Store
from tasks.stage import artifact_key


class Figures(BaseModel):
    """A version's held-out metrics and its fixed generation sample."""

    val_loss: float  # nats per byte
    bpb: float  # bits per byte
    tokens: int  # bytes predicted
    sample: str

    def metric(self, name: str) -> float:
        return getattr(self, name)


class GateResult(BaseModel):
    name: str
    version: str
    decision: str  # promoted | refused | kept (the candidate already is the champion)
    metric: str
    margin: float
    candidate: Figures
    champion_before: str | None  # version that held the alias when the gate ran
    champion: Figures | None
    reason: str


def measure(model: GPT, data: DataConfig, gate: GateConfig, seed: int) -> Figures:
    """Held-out loss and bits per byte (bytes are the tokens, so bpb = loss / ln 2) and the fixed sample."""
    corpus = ByteCorpus(data, model.cfg.context, seed)
    loss = evaluate(model, corpus.val_batches(gate.eval_batches, gate.batch_size))
    sample = generate(model, gate.prompt.encode(), gate.sample_bytes, temperature=0.8, top_k=40, seed=0)
    return Figures(
        val_loss=loss,
        bpb=loss / math.log(2),
        tokens=gate.eval_batches * gate.batch_size * model.cfg.context,
        sample=gate.prompt + decode(sample),
    )


def decide(candidate: float, champion: float | None, margin: float) -> tuple[bool, str]:
    """Lower is better. Promote when there is no champion or the candidate is better by more than ``margin``."""
    if champion is None:
        return True, "no champion yet"
    gain = champion - candidate
    if gain > margin:
        return True, f"beats the champion by {gain:.4f} > margin {margin:g}"
    return False, f"improves on the champion by {gain:.4f}, not more than margin {margin:g}"


def report(r: GateResult) -> str:
    """The decision as markdown, for Prefect and for the version's run."""
    head = f"# Gate: `models:/{r.name}/{r.version}` {r.decision.upper()}\n\n{r.reason} (metric `{r.metric}`, lower is better).\n\n"
    rows = ["| | version | val loss | bits/byte | bytes |", "|---|---|---|---|---|"]
    for who, version, f in (("candidate", r.version, r.candidate), ("champion before", r.champion_before, r.champion)):
        if f is not None:
            rows.append(f"| {who} | {version} | {f.val_loss:.4f} | {f.bpb:.4f} | {f.tokens} |")
    if r.champion is None:
        rows.append("| champion before | none | | | |")
    sample = r.candidate.sample.replace("```", "'''")
    return head + "\n".join(rows) + f"\n\nFixed sample (seed 0):\n\n```\n{sample}\n```\n"


@task(name="evaluation-gate", task_run_name="gate-v{ref.version}")
def run_gate(ref: ModelRef, store: Store, gate: GateConfig, data: DataConfig, seed: int) -> GateResult:
    log = get_run_logger()
    client = store.client()
    candidate = measure(load_model(store, client.get_model_version(ref.name, ref.version)), data, gate, seed)
    aliases = client.get_registered_model(ref.name).aliases
    before = str(aliases[gate.alias]) if gate.alias in aliases else None
    champion = None
    if before == ref.version:
        decision, reason = "kept", f"already the {gate.alias}"
    else:
        if before is not None:
            champion = measure(load_model(store, client.get_model_version(ref.name, before)), data, gate, seed)
        promote, reason = decide(
            candidate.metric(gate.metric), champion.metric(gate.metric) if champion else None, gate.margin
        )
        decision = "promoted" if promote else "refused"
    result = GateResult(
        name=ref.name,
        version=ref.version,
        decision=decision,
        metric=gate.metric,
        margin=gate.margin,
        candidate=candidate,
        champion_before=before,
        champion=champion,
        reason=reason,
    )
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tags = {
        "gate_decision": decision,
        "gate_reason": reason,
        "gate_metric": gate.metric,
        "gate_margin": f"{gate.margin:g}",
        "gate_val_loss": f"{candidate.val_loss:.6f}",
        "gate_bpb": f"{candidate.bpb:.6f}",
        "gate_at": now,
        "gate_champion_before": before or "",
        "gate_sample": candidate.sample[:500],
        "gate_champion_val_loss": f"{champion.val_loss:.6f}" if champion else "",
    }
    if decision == "promoted":
        tags |= {
            "gate_promoted_at": now,
            "gate_replaced": before or "",
        }  # champion history: kept through later refusals
    for key, value in tags.items():
        client.set_model_version_tag(ref.name, ref.version, key, value)
    if decision == "promoted":
        client.set_registered_model_alias(ref.name, gate.alias, ref.version)  # last: the tags explain the move
    md = report(result)
    client.log_text(ref.run_id, md, "gate/gate.md")
    create_markdown_artifact(
        markdown=md, key=f"{artifact_key(ref.name)}-gate", description=f"Gate decision for version {ref.version}"
    )
    (log.info if decision != "refused" else log.warning)("gate: version %s %s: %s", ref.version, decision, reason)
    return result
