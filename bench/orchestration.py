"""Orchestration overhead: one staged schedule through the real Prefect flow (flows/staged.py)
with the embedded MLflow store under the workdir, compared to the pure train() time inside it.

Counted as overhead: everything in the ``staged_training`` call that is not a training step:
Prefect flow/task runs and state changes, the idempotency lookup, parent download + sha256 check,
growth, corpus loading, MLflow registration, the hooks inside the training loop (progress bar,
Prefect progress artifacts, in-stage checkpoints), the gate, cards and the final plot + artifacts.
Training time is what the flow's own StageResults report (``train_seconds``: the loop minus its hooks).
The Prefect ephemeral server is started by a no-op flow *before* the clock starts: it is a
once-per-process cost, not a per-stage one (reported separately).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.spec import Preset, Schedule, pipeline_config


def embedded_env(workdir: Path) -> None:
    """Keep Prefect's home/database and matplotlib's cache inside the workdir (unless configured)."""
    os.environ.setdefault("PREFECT_HOME", str(workdir.resolve() / "prefect-home"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if "PREFECT_API_URL" not in os.environ:
        os.environ.setdefault(
            "PREFECT_SERVER_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{workdir.resolve() / 'prefect.db'}"
        )
    os.environ.setdefault("MPLCONFIGDIR", str(workdir.resolve() / "mpl"))
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def orchestration_overhead(preset: Preset, schedule: Schedule, workdir: Path, seed: int) -> dict:
    embedded_env(workdir)
    from prefect import flow

    from flows.staged import staged_training

    @flow(name="staged-bench-warmup", persist_result=False)
    def _warmup() -> None:
        return None

    t = time.perf_counter()
    _warmup()
    server_start_s = time.perf_counter() - t
    cfg = pipeline_config(preset, schedule, seed, model_name=f"bench-{schedule.name}-{int(time.time())}")
    t = time.perf_counter()
    results = staged_training(cfg, str(workdir))
    flow_s = time.perf_counter() - t
    pure = sum(r.train_seconds for r in results)
    task_s = sum(r.seconds for r in results)
    return {
        "orchestration_overhead_fraction": (flow_s - pure) / flow_s,
        "schedule": schedule.name,
        "flow_seconds": flow_s,
        "pure_train_seconds": pure,
        "breakdown_seconds": {
            "inside_stage_tasks_outside_training": task_s - pure,
            "prefect_flow_and_task_runs_gate_cards_publish": flow_s - task_s,
        },
        "prefect_server_start_seconds_excluded": server_start_s,
        "stages": [
            {"version": r.ref.version, "n_layers": r.ref.n_layers, "steps": r.steps, "seconds": r.seconds}
            for r in results
        ],
        "model_name": cfg.registry.model_name,
    }
