"""The pipeline: each stage loads the previous stage's registered model, grows it, trains it and
registers the result; the flow chains the stages and, on a rerun, skips those already registered
and resumes the interrupted one from its newest checkpoint. After the last stage (or every stage,
with ``gate.every_stage``) the evaluation gate decides whether the new version becomes the
champion; each version gets a model card."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from tasks.card import write_card
from tasks.compare import publish_comparison
from tasks.config import ConfigError, PipelineConfig, resolve_config
from tasks.gate import GateResult, run_gate
from tasks.monitor import tag_flow_run
from tasks.registry import Pipeline, Store, get_version
from tasks.report import plot_losses, publish
from tasks.stage import StageResult, run_stage, skipped_result


def flow_run_name() -> str:
    """``<model name>-<config hash>``: Prefect calls this with the run's parameters before the flow body runs."""
    params = flow_run.parameters
    try:
        return Pipeline.of(resolve_config(params.get("config"), params.get("overrides"))).run_name
    except ConfigError:
        return "staged-training-bad-config"  # the flow body then fails with the one-line error


@flow(name="staged-training", flow_run_name=flow_run_name)
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
    defaults (== configs/demo.yaml). The flow run is named and tagged after the pipeline (tasks/monitor.py)."""
    config = resolve_config(config, overrides)
    tag_flow_run(config.registry.model_name)
    pipeline = Pipeline.of(config, flow_run_id=str(flow_run.id))
    store = Store.resolve(workdir, config.storage)
    stage = run_stage.with_options(retries=config.retries, retry_delay_seconds=config.retry_delay_s)
    specs = config.stage_specs()
    results: list[StageResult] = []
    parent = None
    if from_version is not None:
        parent = get_version(store.client(), config.registry.model_name, from_version)
        results.append(skipped_result(parent, store, specs[parent.stage - 1].model))
        specs = specs[parent.stage :]
    gated: GateResult | None = None
    for spec in specs:
        result = stage(spec, parent, store, pipeline)  # configs and references in, never tensors
        results.append(result)
        parent = result.ref
        gate_now = config.gate.enabled and (config.gate.every_stage or spec.index == len(config.stages))
        gated = run_gate(result.ref, store, config.gate, config.data, config.seed) if gate_now else None
        write_card(store, results, config.data, gated)
    png = plot_losses(results, Path(workdir) / f"{config.registry.model_name}-loss.png")
    publish(results, png, store, pipeline)
    publish_comparison(store, results, gated, config.gate.alias)
    return results


if __name__ == "__main__":
    staged_training()
