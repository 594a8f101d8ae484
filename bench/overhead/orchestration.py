"""Orchestration overhead: one staged schedule through the real Prefect flow (flows/staged.py) with the
embedded MLflow store under the workdir, compared to the pure training time inside it.

    overhead fraction = (flow wall time - pure training time) / flow wall time

Pure training time is what the flow's own StageResults report: ``train_seconds``, the training loop
minus its hooks. Everything else counts as overhead: Prefect flow/task runs and state changes, the
idempotency lookup, parent download + sha256 check, growth, corpus loading, MLflow registration, the
hooks inside the loop (progress bar, Prefect progress artifacts, **in-stage checkpoints**), the gate,
cards, summary and comparison. Two once-per-machine costs are paid *before* the clock starts and reported
separately: the Prefect ephemeral server's start (a no-op flow), and the creation of the embedded MLflow
store (its schema migrations, seconds on a fresh workdir; a pipeline's store exists after its first run).
Each task run's own duration comes from Prefect's records of the flow run, so the breakdown shows where
the overhead goes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.suite.spec import Budget, HParams, Preset, Schedule, pipeline_config


def embedded_env(workdir: Path) -> None:
    """Keep Prefect's home/database and matplotlib's cache inside the workdir (unless configured)."""
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(workdir.resolve() / "prefect-home"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # a fresh database migrates for ~20 s on 2 busy cores: Prefect's default 20 s start-up timeout is too tight
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if "PREFECT_API_URL" not in os.environ:
        os.environ.setdefault(
            "PREFECT_SERVER_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{workdir.resolve() / 'prefect.db'}"
        )
    os.environ.setdefault("MPLCONFIGDIR", str(workdir.resolve() / "mpl"))
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def task_run_seconds(flow_run_id) -> dict[str, float]:
    """Each task run of the flow run and how long it ran, from Prefect's own records."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    spans = {r.name: (r.start_time, r.end_time) for r in runs if r.start_time and r.end_time}
    return {name: (end - start).total_seconds() for name, (start, end) in sorted(spans.items(), key=lambda kv: kv[1])}


def orchestration_overhead(
    preset: Preset, schedule: Schedule, hp: HParams, budget: Budget, workdir: Path, seed: int
) -> dict:
    embedded_env(workdir)
    from prefect import flow

    from flows.staged import staged_training
    from tasks.registry import Registry

    @flow(name="staged-bench-warmup", persist_result=False)
    def _warmup() -> None:
        return None

    t = time.perf_counter()
    _warmup()
    server_start_s = time.perf_counter() - t
    t = time.perf_counter()
    Registry.resolve(workdir).client().search_registered_models()  # creates and migrates the embedded store
    store_init_s = time.perf_counter() - t
    name = f"bench-{schedule.name}-{int(time.time())}"
    cfg = pipeline_config(preset, schedule, seed, name, hp, budget.scratch_steps)
    t = time.perf_counter()
    state = staged_training(cfg, str(workdir), return_state=True)
    flow_s = time.perf_counter() - t
    results = state.result()
    pure = sum(r.train_seconds for r in results)
    task_s = sum(r.seconds for r in results)
    return {
        "orchestration_overhead_fraction": (flow_s - pure) / flow_s,
        "schedule": schedule.name,
        "tokens_per_param": budget.tokens_per_param,
        "flow_seconds": flow_s,
        "pure_train_seconds": pure,
        "breakdown_seconds": {
            "inside_stage_tasks_outside_training_steps": task_s - pure,  # load, grow, hooks + checkpoints, register
            "flow_gate_cards_summary_comparison": flow_s - task_s,
        },
        "task_run_seconds": task_run_seconds(state.state_details.flow_run_id),
        "prefect_server_start_seconds_excluded": server_start_s,
        "mlflow_store_creation_seconds_excluded": store_init_s,
        "stages": [
            {"version": r.ref.version, "n_layers": r.ref.n_layers, "steps": r.steps, "seconds": r.seconds}
            for r in results
        ],
        "model_name": cfg.registry.model_name,
    }
