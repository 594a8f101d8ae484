"""Orchestration overhead: one staged schedule through the real Prefect flow (flows/staged.py)
with the embedded MLflow store under the workdir, compared to the pure train() time inside it.

Counted as overhead: everything in the ``staged_training`` call that is not a training step:
Prefect flow/task runs and state changes, the idempotency lookup, parent download + sha256 check,
growth, corpus loading, MLflow registration (the stage "checkpoint"), the progress bar and Prefect
progress artifacts updated from the step callback, and the final plot + artifacts.
The Prefect ephemeral server is started by a no-op flow *before* the clock starts: it is a
once-per-process cost, not a per-stage one (reported separately).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

from bench.spec import Preset, Schedule, stage_model, stage_train


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


def pipeline_config(preset: Preset, schedule: Schedule, seed: int, model_name: str):
    """The staged schedule as a PipelineConfig for `staged run`: the same stages, operators and policies."""
    from tasks.config import PipelineConfig

    stages = []
    for plan in schedule.stages:
        t = stage_train(preset, plan)
        train = {k: getattr(t, k) for k in ("lr", "warmup_steps", "batch_size", "min_lr_ratio")}
        stages.append(
            {
                "n_layers": plan.n_layers,
                "steps": t.steps,
                "growth": plan.growth.model_dump(),
                "optimizer": {"state": plan.optimizer},
                "schedule": plan.schedule.model_dump(),
                "train": train,
            }
        )
    width = stage_model(preset, schedule.stages[0]).model_dump(exclude={"n_layers"})  # the flow derives later widths
    base = preset.train.model_dump(exclude={"steps"}) | {"eval_every": 10**6, "eval_batches": 1}
    cfg = PipelineConfig.model_validate(
        {
            "seed": seed,
            "retries": 0,
            "data": preset.data.model_dump(),
            "model": width,
            "train": base,
            "registry": {"model_name": model_name},
            "stages": stages,
        }
    )
    for spec, plan in zip(cfg.stage_specs(), schedule.stages):
        if spec.model != stage_model(preset, plan):
            raise ValueError(
                f"schedule {schedule.name!r} stage {spec.index}: the flow would build {spec.model}, "
                f"the bench {stage_model(preset, plan)}"
            )
    return cfg


@contextmanager
def _timed_train(log: list[dict]):
    """Wrap the train() that tasks/stage.py calls, timing it and the step callback it is given."""
    import tasks.stage as stage_mod

    original = stage_mod.train

    def timed(*args, on_step=None, **kwargs):
        entry = {"callback_s": 0.0}

        def cb(info):
            t = time.perf_counter()
            if on_step is not None:
                on_step(info)
            entry["callback_s"] += time.perf_counter() - t

        t0 = time.perf_counter()
        result = original(*args, on_step=cb, **kwargs)
        entry["train_s"] = time.perf_counter() - t0
        log.append(entry)
        return result

    stage_mod.train = timed
    try:
        yield
    finally:
        stage_mod.train = original


def orchestration_overhead(preset: Preset, schedule: Schedule, workdir: Path, seed: int) -> dict:
    embedded_env(workdir)
    from prefect import flow

    from flows.staged import staged_training

    @flow(name="staged-bench-warmup")
    def _warmup() -> None:
        return None

    t = time.perf_counter()
    _warmup()
    server_start_s = time.perf_counter() - t
    cfg = pipeline_config(preset, schedule, seed, model_name=f"bench-{schedule.name}-{int(time.time())}")
    log: list[dict] = []
    with _timed_train(log):
        t = time.perf_counter()
        results = staged_training(cfg, str(workdir))
        flow_s = time.perf_counter() - t
    train_s = sum(e["train_s"] for e in log)
    callback_s = sum(e["callback_s"] for e in log)
    task_s = sum(r.seconds for r in results)
    pure = train_s - callback_s
    return {
        "orchestration_overhead_fraction": (flow_s - pure) / flow_s,
        "schedule": schedule.name,
        "flow_seconds": flow_s,
        "pure_train_seconds": pure,
        "breakdown_seconds": {
            "step_callbacks_progress_and_prefect_artifacts": callback_s,
            "inside_stage_tasks_outside_train": task_s - train_s,
            "prefect_flow_and_task_runs_plot_publish": flow_s - task_s,
        },
        "prefect_server_start_seconds_excluded": server_start_s,
        "stages": [
            {"version": r.ref.version, "n_layers": r.ref.n_layers, "steps": r.steps, "seconds": r.seconds}
            for r in results
        ],
        "model_name": cfg.registry.model_name,
    }
