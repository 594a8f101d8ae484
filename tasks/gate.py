"""The evaluation gate: may a new version become the champion?

The candidate and the current champion are evaluated now, on the same held-out set (fixed
validation batches of this pipeline's corpus, which training never reads), so the comparison is
fair even when the champion came from another run. The candidate is promoted only if it beats the
champion by more than ``gate.margin``. Either way the decision and the figures are written to the
candidate's version tags, to its run (``gate/gate.md``) and to a Prefect markdown artifact: a
refusal leaves the alias where it was and says so.

Gates of one alias run their decision one at a time, under a lease in the registry
(tasks/registry/lease.py): two gates at once cannot both promote over the same champion; the second
compares against whatever the first left.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger
from tokenizers import Tokenizer
from torch import nn

from models.data import tokenizer as tokenizers
from models.data.bytes import DataConfig
from models.data.corpus import open_corpus
from models.data.tokenizer import Vocabulary
from models.sample import complete
from models.train.loop import evaluate
from tasks import downstream
from tasks.config import GateConfig, eval_set_id
from tasks.publish import ArtifactKeys
from tasks.registry import ModelRef, Registry, lease, load_version, log_scores, version_ref
from tasks.registry.schema import Artifacts, GateTags
from tasks.results import Figures, GateResult


def measure(
    model: nn.Module,
    tokenizer: Tokenizer,
    data: DataConfig,
    gate: GateConfig,
    seed: int,
    cache_dir: Path,
    val_loss: float | None = None,
) -> Figures:
    """Held-out loss (nats per token), bits per token and per byte, and the fixed sample. ``val_loss``: the loss
    on exactly these batches, already measured (the stage's own, by ``eval_set``): not computed again.

    bits per byte = total bits over the held-out tokens / the bytes of text they stand for; for the byte
    vocabulary every token is one byte, so bpb = bpt = loss / ln 2."""
    corpus = open_corpus(data, model.cfg.context, seed, Vocabulary.of(tokenizer), cache_dir, progress=False)
    batches = corpus.val_batches(gate.eval_batches, gate.batch_size)
    loss = evaluate(model, batches) if val_loss is None else val_loss
    tokens = gate.eval_batches * gate.batch_size * model.cfg.context
    per_token = tokenizers.token_bytes(tokenizer)  # (V,) bytes each token id stands for
    n_bytes = int(sum(int(per_token[y].sum()) for _, y in batches))
    sample = complete(model, tokenizer, gate.prompt, gate.sample_bytes, temperature=0.8, top_k=40, seed=0)
    scores = {}
    if gate.metric.startswith("task:"):  # a downstream score decides (lm-evaluation-harness, offline)
        scores = downstream.evaluate(model, tokenizer, [gate.metric.removeprefix("task:").partition("/")[0]])
    bpt = loss / math.log(2)
    return Figures(
        val_loss=loss,
        bpb=bpt * (tokens / n_bytes),
        bpt=bpt,
        tokens=tokens,
        bytes=n_bytes,
        sample=sample,
        scores=scores,
    )


def recorded(tags: GateTags | None, eval_set: str, gate: GateConfig) -> Figures | None:
    """A version's figures as an earlier gate on the same held-out set wrote them to its tags; None when there
    are none (never gated, another set, a downstream metric: re-measured)."""
    if tags is None or tags.eval_set != eval_set or tags.tokens is None or gate.metric.startswith("task:"):
        return None
    return Figures(
        val_loss=tags.val_loss, bpb=tags.bpb, bpt=tags.bpt, tokens=tags.tokens, bytes=tags.bytes, sample=tags.sample
    )


class HeldOut(NamedTuple):
    """The gate's held-out set: the data and seed its batches come from, where the shards are, and its id."""

    data: DataConfig
    seed: int
    cache: Path
    id: str  # tasks.config.eval_set_id


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
    title = f"# Gate: `models:/{r.name}/{r.version}` {r.decision.upper()}"
    better = "higher is better" if r.metric.startswith("task:") else "lower is better"
    head = f"{title}\n\n{r.reason} (metric `{r.metric}`, {better}).\n\n"
    rows = ["| | version | val loss | bits/byte | bits/token | tokens | bytes |", "|---|---|---|---|---|---|---|"]
    for who, version, f in (("candidate", r.version, r.candidate), ("champion before", r.champion_before, r.champion)):
        if f is not None:
            rows.append(
                f"| {who} | {version} | {f.val_loss:.4f} | {f.bpb:.4f} | {f.bpt:.4f} | {f.tokens} | {f.bytes} |"
            )
    if r.champion is None:
        rows.append("| champion before | none | | | | | |")
    sample = r.candidate.sample.replace("```", "'''")
    return head + "\n".join(rows) + f"\n\nFixed sample (seed 0):\n\n```\n{sample}\n```\n"


@task(name="evaluation-gate", task_run_name="gate-v{ref.version}", persist_result=False)
def run_gate(
    ref: ModelRef, registry: Registry, gate: GateConfig, data: DataConfig, seed: int, cache_dir: str
) -> GateResult:
    """``cache_dir``: where the corpus's token shards are (tasks/workspace.py); the byte corpus needs none."""
    log = get_run_logger()
    client = registry.client()
    cache = Path(cache_dir)
    model, tokenizer = load_version(registry, ref)
    set_id = eval_set_id(data, seed, model.cfg.context, ref.tokenizer_sha256, gate.eval_batches, gate.batch_size)
    held_out = HeldOut(data, seed, cache, set_id)
    measured = ref.val_loss if ref.eval_set == set_id else None  # the stage's own final loss on these batches
    candidate = measure(model, tokenizer, data, gate, seed, cache, val_loss=measured)
    del model
    if candidate.scores:
        log_scores(registry, ref.run_id, candidate.scores)
    with lease(client, f"{ref.name}@{gate.alias}"):  # one gate at a time reads, decides and moves the alias
        result = _decide_and_record(client, registry, ref, gate, held_out, candidate)
    md = report(result)
    client.log_text(ref.run_id, md, Artifacts.GATE)
    key, description = ArtifactKeys(ref.name).gate, f"Gate decision for version {ref.version}"
    create_markdown_artifact(markdown=md, key=key, description=description)
    decision, reason = result.decision, result.reason
    (log.info if decision != "refused" else log.warning)("gate: version %s %s: %s", ref.version, decision, reason)
    return result


def _decide_and_record(
    client,
    registry: Registry,
    ref: ModelRef,
    gate: GateConfig,
    held_out: HeldOut,
    candidate: Figures,
) -> GateResult:
    """Under the lease: the champion now (as an earlier gate on the same held-out set recorded it, else
    measured), the decision, the tags, and on promotion the alias."""
    aliases = client.get_registered_model(ref.name).aliases
    before = str(aliases[gate.alias]) if gate.alias in aliases else None
    champion = None
    if before == ref.version:
        decision, reason = "kept", f"already the {gate.alias}"
    else:
        if before is not None:
            mv = client.get_model_version(ref.name, before)
            champion = recorded(GateTags.from_tags(mv.tags), held_out.id, gate) or measure(
                *load_version(registry, version_ref(mv)), held_out.data, gate, held_out.seed, held_out.cache
            )
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
    promoted = decision == "promoted"
    tags = GateTags(
        decision=decision,
        reason=reason,
        metric=gate.metric,
        margin=f"{gate.margin:g}",
        val_loss=candidate.val_loss,
        bpb=candidate.bpb,
        bpt=candidate.bpt,
        at=now,
        champion_before=before,
        champion_val_loss=champion.val_loss if champion else None,
        sample=candidate.sample[:500],
        promoted_at=now if promoted else None,  # champion history: kept through later refusals
        replaced=before if promoted else None,
        eval_set=held_out.id,
        tokens=candidate.tokens,
        bytes=candidate.bytes,
    )
    for key, value in tags.to_tags().items():
        client.set_model_version_tag(ref.name, ref.version, key, value)
    if promoted:
        client.set_registered_model_alias(ref.name, gate.alias, ref.version)  # last: the tags explain the move
    return result
