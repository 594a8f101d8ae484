"""The pipeline: each stage loads the previous stage's registered model, grows it, trains it and
registers the result; the flow chains the stages and, on a rerun, skips those already registered
and resumes the interrupted one from its newest checkpoint. After the last stage (or every stage,
with ``gate.every_stage``) the evaluation gate decides whether the new version becomes the
champion; each version gets a model card.

The publications are off the critical path: stage k's model card is submitted to Prefect's task runner
and written while stage k+1 trains; the summary is written while the last stage's gate runs, and the
last card and the comparison (both need the gate's decision) side by side after it. The flow waits
for all of them before it finishes, so its results, the registry and the UI artifacts are those of a
run that published one after the other.

The flow owns the MLflow parent run: it opens it before the first stage that trains (a rerun that
trains nothing opens none), and finishes or fails it here, in one place.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.futures import PrefectFuture, wait
from prefect.runtime import flow_run

from flows.approve import approve, check_approvals
from flows.pools import check_pools, run_on_pool
from models.errors import UserError
from tasks import publish
from tasks.config import ConfigError, PipelineConfig, resolve_config
from tasks.gate import run_gate
from tasks.record import skipped_result
from tasks.registry import Pipeline, PipelineRun, get_version
from tasks.results import GateResult, StageResult
from tasks.stage import look_up, pipeline_tokenizer, run_stage
from tasks.workspace import Workspace


def flow_run_name() -> str:
    """``<model name>-<config hash>``: Prefect calls this with the run's parameters before the flow body runs."""
    params = flow_run.parameters
    try:
        return Pipeline.of(resolve_config(params.get("config"), params.get("overrides"))).run_name
    except ConfigError:
        return "staged-training-bad-config"  # the flow body then fails with the one-line error


def retryable(task, task_run, state) -> bool:
    """Retry what may pass next time; never a user's mistake (a bad input, a version whose files fail their
    manifest): it fails the same way again."""
    try:
        state.result()
    except UserError:
        return False
    except BaseException:
        return True
    return True


@flow(name="staged-training", flow_run_name=flow_run_name, persist_result=False)  # results are never pickled
def staged_training(
    config: PipelineConfig | str | None = None,
    workdir: str = ".staged",
    from_version: str | None = None,
    overrides: list[str] | None = None,
) -> list[StageResult]:
    """Train every stage of ``config``; with ``from_version``, start after that registered version's
    stage, growing from it (its own stage is reported as skipped).

    ``config`` is a :class:`PipelineConfig`, a YAML path (what deployments pass, relative to the
    checkout the worker pulled) with ``overrides`` as ``--set`` would give them, or None for the
    defaults (== configs/demo.yaml). The flow run is named and tagged after the pipeline."""
    config = resolve_config(config, overrides)
    publish.tag_flow_run(config.registry.model_name)
    ws = Workspace.resolve(workdir, config.storage)
    registry, specs = ws.registry, config.stage_specs()
    check_pools(config, ws)  # a stage on a work pool that cannot run it: refused before anything starts
    check_approvals(config)  # an approval no person could give (no Prefect server): likewise
    placements = config.placements()
    pipeline = Pipeline.of(config, flow_run_id=str(flow_run.id))
    parent_run = PipelineRun(registry.client(), registry.artifact_location, pipeline)
    retry = {
        "retries": config.retry.retries,
        "retry_delay_seconds": config.retry.delay_s,
        "retry_condition_fn": retryable,
    }
    results: list[StageResult] = []
    parent = None
    if from_version is not None:
        parent = get_version(registry.client(), config.registry.model_name, from_version)
        results.append(skipped_result(parent, registry, specs[parent.stage - 1].model))
        specs = specs[parent.stage :]
    gated: GateResult | None = None
    pending: list[PrefectFuture] = []  # publications running beside the training
    card: PrefectFuture | None = None  # the latest stage's model card (what a person approving the next one reads)
    tokenizer = pipeline_tokenizer(specs[0], ws)  # trained once (or read) and stored; None: the byte vocabulary
    try:
        for spec in specs:
            lookup = look_up(spec, parent, tokenizer, registry)  # the key and any version: once, passed down
            asked = config.stages[spec.index - 1]
            if asked.approve and lookup.registered is None:  # a person resumes the paused flow run (flows/approve.py)
                wait(pending)  # nothing of this run writes while it is paused; the previous card is complete
                approve(spec, asked.approve_timeout_s, card.result() if card else None)
            run_id = parent_run.open() if lookup.registered is None else parent_run.find()
            where = placements[spec.index - 1]
            # configs and references, no tensors; a registered stage is found here, wherever it would run
            if where is None or lookup.registered is not None:
                result = run_stage.with_options(**retry)(spec, parent, ws, run_id, tokenizer, lookup)
            else:  # its own flow run on that work pool (flows/pools.py)
                result = run_on_pool.with_options(**retry)(spec, parent, ws, run_id, tokenizer, where)
            results.append(result)
            parent = result.ref
            if spec is specs[-1]:  # the summary needs no gate decision: it is written beside the last gate
                png = Path(workdir) / f"{config.registry.model_name}-loss.png"
                summary_args = (list(results), png, registry, parent_run.find(), pipeline.run_name)
                pending.append(publish.summary.with_options(**retry).submit(*summary_args))
            gate_now = config.gate.enabled and (config.gate.every_stage or spec.index == len(config.stages))
            gated = (
                run_gate.with_options(**retry)(parent, registry, config.gate, config.data, config.seed, ws.cache_dir)
                if gate_now
                else None
            )
            card = publish.card.with_options(**retry).submit(registry, list(results), config.data, gated)
            pending.append(card)
        pending.append(
            publish.comparison.with_options(**retry).submit(registry, list(results), gated, config.gate.alias)
        )
        for future in pending:
            future.result()  # raises the first publication that failed (after its retries)
    except BaseException:
        wait(pending)  # never leave a publication writing after the flow has failed its parent run
        parent_run.fail()
        raise
    parent_run.finish()
    return results


if __name__ == "__main__":
    staged_training()
