"""MLflow's system metrics on a stage's run while it trains (``train.system_metrics: true``).

    with training_run(registry, experiment, stage, stage_key, parent_run_id, on) as run_id:
        ... train ...                      # MLflow samples system/* onto run_id meanwhile
    register(..., extras=StageRunExtras(run_id=run_id, ...))   # the version's run is that same run

MLflow samples system metrics onto a RUNNING run (``SystemMetricsMonitor``: CPU, memory, disk, network, and each
GPU where NVIDIA's or AMD's library finds one, as ``system/<name>`` at steps 0, 1, ... every
``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds, 10 by default; a stage shorter than one interval gets none).
So with it on, the stage's run is created when its training starts rather than at its registration: tagged with
the stage key and nested under the pipeline's run from the start, and ``register`` logs the params, curves and
model into it and finishes it. A training that fails marks the run FAILED (the next attempt's registration deletes
it, as any orphan); a stage that ends up found registered by another attempt deletes it. Off, nothing changes: the
run is created at registration, as before. The monitor samples the machine the stage task runs on (under torchrun
with one node, every rank's GPUs; other nodes are not sampled).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from tasks.registry.client import Registry
from tasks.registry.runs import experiment_id
from tasks.registry.schema import PARENT_RUN_TAG, stage_key_tags, stage_run_name


@contextmanager
def training_run(
    registry: Registry, experiment: str, stage: int, stage_key: str, parent_run_id: str | None, on: bool
) -> Iterator[str | None]:
    """With ``on``: the stage's run, RUNNING, with MLflow's system metrics monitor sampling onto it until the block
    ends; without: None (the run is created at registration)."""
    if not on:
        yield None
        return
    client = registry.client()
    exp = experiment_id(client, registry.artifact_location, experiment)
    tags = stage_key_tags(stage_key) | ({PARENT_RUN_TAG: parent_run_id} if parent_run_id else {})
    run_id = client.create_run(exp, run_name=stage_run_name(stage), tags=tags).info.run_id
    monitor = SystemMetricsMonitor(run_id, tracking_uri=registry.tracking_uri)
    monitor.start()
    try:
        yield run_id
    except BaseException:
        monitor.finish()
        client.set_terminated(run_id, "FAILED")
        raise
    monitor.finish()  # stops sampling and flushes what it buffered, before the registration finishes the run
