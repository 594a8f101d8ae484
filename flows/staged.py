"""The pipeline: each stage loads the previous stage's registered model, grows it, trains it and
registers the result; the flow chains the stages and, on a rerun, skips those already registered
and resumes the interrupted one from its newest checkpoint."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from tasks.config import PipelineConfig
from tasks.registry import Store, get_version
from tasks.report import plot_losses, publish
from tasks.stage import StageResult, run_stage, skipped_result


@flow(name="staged-training")
def staged_training(
    config: PipelineConfig | None = None, workdir: str = ".staged", from_version: str | None = None
) -> list[StageResult]:
    """Train every stage of ``config``; with ``from_version``, start after that registered version's
    stage, growing from it (its own stage is reported as skipped)."""
    config = config or PipelineConfig()
    store = Store.resolve(workdir, config.storage)
    stage = run_stage.with_options(retries=config.retries, retry_delay_seconds=config.retry_delay_s)
    specs = config.stage_specs()
    results: list[StageResult] = []
    parent = None
    if from_version is not None:
        parent = get_version(store.client(), config.registry.model_name, from_version)
        results.append(skipped_result(parent, store, specs[parent.stage - 1].model))
        specs = specs[parent.stage :]
    for spec in specs:
        result = stage(spec, parent, store)  # configs and references in, never tensors
        results.append(result)
        parent = result.ref
    png = plot_losses(results, Path(workdir) / f"{config.registry.model_name}-loss.png")
    publish(results, png, store)
    return results


if __name__ == "__main__":
    staged_training()
