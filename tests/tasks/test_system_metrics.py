"""``train.system_metrics: true``: MLflow's own SystemMetricsMonitor samples the machine onto each stage's run while
it trains (``system/cpu_utilization_percentage``, ...), the same run the version is registered from; off, a stage's
run has no ``system/`` metric. Real flows on the session's Prefect API, an embedded MLflow store.

How many samples a stage gets is its training time over the interval: a fact about the machine, not the product.
So the repeated sampling is shown on the monitor's own block, held open until it has sampled twice; the flows
only need a stage longer than one interval (0.05 s here; stage 1 trains for well over a second)."""

import sys
import time

import pytest
from repo import REPO_ROOT

pytestmark = [pytest.mark.integration]

SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")
INTERVAL = "0.05"  # seconds; MLflow's own variable (default 10 s)
# one stage many intervals long, and a short second one
STAGES = [
    "stages=[{n_layers: 2, steps: 200}, {n_layers: 4, steps: 2, growth: {operator: stack}}]",
    "gate.enabled=false",
]


def _runs(workdir, name: str, sets: list[str]):
    from flows.staged import staged_training
    from tasks.config import load_config
    from tasks.registry import Registry

    results = staged_training(load_config(SMOKE, [*STAGES, f"registry.model_name={name}", *sets]), str(workdir))
    client = Registry.resolve(workdir).client()
    return client, [client.get_run(r.ref.run_id) for r in results]


def test_the_monitor_samples_onto_the_running_run_until_its_block_ends(workdir, monkeypatch):
    from tasks.registry import Registry, training_run

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", INTERVAL)
    registry = Registry.resolve(workdir)
    client = registry.client()
    history = lambda run_id: client.get_metric_history(run_id, "system/cpu_utilization_percentage")  # noqa: E731
    with training_run(registry, "sysmetrics", 1, "k" * 64, None, True) as run_id:
        assert client.get_run(run_id).info.status == "RUNNING"
        deadline = time.monotonic() + 60
        while len(history(run_id)) < 2:  # a condition, not a sleep: the monitor's thread logs every interval
            assert time.monotonic() < deadline, "no second sample in 60 s"
            time.sleep(0.05)
    samples = history(run_id)
    assert [m.step for m in samples] == list(range(len(samples)))  # steps 0, 1, ..., one per interval
    assert all(0 <= m.value <= 100 for m in samples)
    time.sleep(3 * float(INTERVAL))
    assert len(history(run_id)) == len(samples)  # the block's end stopped it: nothing arrives after
    with pytest.raises(RuntimeError):  # a failed training marks the run FAILED, and the error goes on
        with training_run(registry, "sysmetrics", 2, "f" * 64, None, True) as failed:
            raise RuntimeError("training failed")
    assert client.get_run(failed).info.status == "FAILED"


def test_each_stage_run_carries_mlflows_system_metrics_when_on(prefect_harness, workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", INTERVAL)
    began = time.time() * 1000
    client, runs = _runs(workdir, "staged-sysmetrics", ["train.system_metrics=true"])
    first = runs[0]
    assert first.info.status == "FINISHED" and first.data.params  # the version's run: params, curves and model
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(first.data.metrics)
    cpu = client.get_metric_history(first.info.run_id, "system/cpu_utilization_percentage")
    assert cpu and [m.step for m in cpu] == list(range(len(cpu)))  # sampled at steps 0, 1, ...
    assert all(0 <= m.value <= 100 and m.timestamp >= began for m in cpu)
    print(f"system metrics: {len(cpu)} samples over stage 1's run", file=sys.stderr)
    # sampled while it trained: before the run ended, after it began
    assert all(first.info.start_time <= m.timestamp <= first.info.end_time for m in cpu)
    assert "val_loss" in first.data.metrics and "train_loss" in first.data.metrics
    # one run per stage, nested under the pipeline's run: no second run was left for the monitor
    experiment = first.info.experiment_id
    stage_runs = [r for r in client.search_runs([experiment]) if r.data.tags.get("mlflow.parentRunId")]
    assert sorted(r.info.run_name for r in stage_runs) == ["stage-1", "stage-2"]
    assert all(r.info.status == "FINISHED" for r in stage_runs)


def test_no_system_metrics_when_off(prefect_harness, workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", INTERVAL)
    _, runs = _runs(workdir, "staged-no-sysmetrics", [])
    for run in runs:
        assert run.data.metrics and not [k for k in run.data.metrics if k.startswith("system/")], run.data.metrics
