"""Stages on Prefect work pools: a stage whose ``work_pool`` is set (``stages.<i>.work_pool`` or ``worker``) is
its own flow run of the ``staged-stage`` deployment on that pool, a subflow of the pipeline's flow run.

    check_pools(config, workspace)   refuse in one line what cannot work, before anything starts
    run_on_pool(spec, ..., where)     the parent's task: deploy, run_deployment, wait, read the result back

The parent creates or updates ``staged-stage/<pool>`` itself (``deploy_stage``): the code from
``STAGED_GIT_REPOSITORY``/``STAGED_GIT_BRANCH`` when set (what deploy/prefect.yaml clones), else this checkout
(a process pool on this machine). Parameters go as JSON, never as Prefect's cloudpickled ad-hoc bundle; the
stage's flow run leaves its StageResult as JSON in the checkpoint storage (flows/stage_flow.py), and a failed
or crashed flow run fails this task, which the pipeline's retry settings retry: the next flow run may land on
any worker of the pool, skips a stage its first attempt registered, and resumes from the newest checkpoint.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

from prefect import task
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL
from prefect.utilities.callables import parameter_schema

from flows.stage_flow import STAGE_FLOW, result_key, staged_stage
from models.errors import UserError
from tasks.config import ParallelConfig, PipelineConfig, StageSpec, WorkerConfig
from tasks.driver import StageRefused
from tasks.registry import ModelRef
from tasks.results import StageResult
from tasks.store import redact
from tasks.workspace import Workspace

CHECKOUT = Path(__file__).resolve().parents[1]  # what a process pool on this machine runs
ENTRYPOINT = "flows/stage_flow.py:staged_stage"
# A stage's flow run says it is alive this often (the flow engine's heartbeat events; Prefect's minimum), and is
# marked Crashed by a Prefect automation after SILENT_S without one: a SIGKILLed worker or a dead node never
# reports its own end. The worst case from death to Crashed is SILENT_S + the triggers service's period (~5 s).
HEARTBEAT_S, SILENT_S = 30, 75
WATCHDOG = "staged-stage: crashed when silent"


class PoolRefused(UserError, ValueError):
    """A stage sent to a work pool that cannot run it: one line, before anything starts."""


class StageRunFailed(RuntimeError):
    """A stage's flow run that did not complete (failed, crashed, cancelled): retried by the pipeline."""


def check_pools(config: PipelineConfig, workspace: Workspace) -> None:
    """Everything a remote worker needs, checked before the first stage: a registry and a checkpoint storage it
    can reach, a Prefect server it polls, the pool, and job variables the pool's template declares."""
    placed = [(i, where) for i, where in enumerate(config.placements()) if where is not None]
    if not placed:
        return
    i, first = placed[0]
    what = f"stages.{i}.work_pool {first.work_pool!r}"
    tracking = workspace.registry.tracking_uri
    if not tracking.startswith(("http://", "https://")):
        raise PoolRefused(
            f"{what}: the registry {redact(tracking)} is local to this machine and a worker elsewhere cannot read it:"
            " set MLFLOW_TRACKING_URI to an MLflow server"
        )
    if not workspace.checkpoint_uri.startswith("s3://"):
        raise PoolRefused(
            f"{what}: checkpoints go to {workspace.checkpoint_uri}, local to this machine, where a worker elsewhere"
            " cannot read them: set storage.uri to s3://bucket/prefix"
        )
    if not PREFECT_API_URL.value():
        raise PoolRefused(f"{what}: work pools need a Prefect server its workers poll: set PREFECT_API_URL")
    with get_client(sync_client=True) as client:
        for i, where in placed:
            declared = _declared(client, where.work_pool, i)
            if unknown := sorted(set(where.job_variables) - set(declared)):
                raise PoolRefused(
                    f"stages.{i}.job_variables: {', '.join(unknown)} not declared by work pool {where.work_pool!r}'s"
                    f" job template (it declares {', '.join(sorted(declared))})"
                )


def _declared(client, pool: str, i: int) -> dict:
    try:
        template = client.read_work_pool(pool).base_job_template
    except ObjectNotFound:
        raise PoolRefused(
            f"stages.{i}.work_pool {pool!r}: no such work pool on {PREFECT_API_URL.value()}"
            f" (create it: prefect work-pool create {pool} --type process, and start a worker)"
        ) from None
    return template.get("variables", {}).get("properties", {})


def sized(where: WorkerConfig, declared: dict, parallel: ParallelConfig) -> dict:
    """The stage's job variables: its hardware from ``parallel`` where the pool's template has the variable
    (``gpu_count``/``gpus_per_node`` = processes per node, ``nnodes``), the config's own values winning."""
    from_stage = {"gpu_count": parallel.nproc, "gpus_per_node": parallel.nproc, "nnodes": parallel.nnodes}
    out = {**{k: v for k, v in from_stage.items() if k in declared}, **where.job_variables}
    if "env" in declared:  # the heartbeats the crash watchdog listens for (watch_heartbeats)
        out["env"] = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S), **out.get("env", {})}
    return out


def watch_heartbeats(client) -> None:
    """The automation that marks a silent ``staged-stage`` flow run Crashed (created once per server): a proactive
    trigger on the flow engine's heartbeat events, per flow run. Its parent then sees the crash and retries."""
    if client.read_automations_by_name(WATCHDOG):
        return
    ended = [f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")]
    client.create_automation(
        AutomationCore(
            name=WATCHDOG,
            description=f"A stage's flow run without a heartbeat for {SILENT_S} s is Crashed (flows/pools.py).",
            trigger=EventTrigger(
                posture=Posture.Proactive,
                after={"prefect.flow-run.heartbeat"},
                expect={"prefect.flow-run.heartbeat", *ended},
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={"prefect.resource.role": "flow", "prefect.resource.name": STAGE_FLOW},
                for_each={"prefect.resource.id"},
                within=timedelta(seconds=SILENT_S),
                threshold=1,
            ),
            actions=[ChangeFlowRunState(state=StateType.CRASHED, message=f"no heartbeat for {SILENT_S} s")],
        )
    )


def deploy_stage(client, pool: str) -> str:
    """Create or update the ``staged-stage/<pool>`` deployment; its name for ``run_deployment``."""
    if repo := os.environ.get("STAGED_GIT_REPOSITORY"):
        clone = {"repository": repo, "branch": os.environ.get("STAGED_GIT_BRANCH") or None}
        pull = [{"prefect.deployments.steps.git_clone": clone}]
    else:
        pull = [{"prefect.deployments.steps.set_working_directory": {"directory": str(CHECKOUT)}}]
    client.create_deployment(
        flow_id=client.create_flow_from_name(STAGE_FLOW),
        name=pool,
        entrypoint=ENTRYPOINT,
        work_pool_name=pool,
        pull_steps=pull,
        parameter_openapi_schema=parameter_schema(staged_stage).model_dump_for_openapi(),
        enforce_parameter_schema=False,  # the flow validates its parameters itself (pydantic)
        description="One stage of a staged-training pipeline, started by the pipeline's flow run (flows/pools.py).",
    )
    return f"{STAGE_FLOW}/{pool}"


@task(name="run-stage-on-pool", task_run_name="stage-{spec.index}-{spec.model.n_layers}L", persist_result=False)
def run_on_pool(
    spec: StageSpec,
    parent: ModelRef | None,
    workspace: Workspace,
    parent_run_id: str | None,
    tokenizer_sha256: str | None,
    where: WorkerConfig,
) -> StageResult:
    """Stage ``spec`` as a flow run on ``where.work_pool``; waits for it and returns its StageResult."""
    with get_client(sync_client=True) as client:
        name = deploy_stage(client, where.work_pool)
        watch_heartbeats(client)
        declared = _declared(client, where.work_pool, spec.index - 1)
    run = run_deployment(
        name,
        parameters={
            "spec": spec.model_dump(mode="json"),
            "parent": parent.model_dump(mode="json") if parent else None,
            "workspace": workspace.model_dump(mode="json"),
            "parent_run_id": parent_run_id,
            "tokenizer_sha256": tokenizer_sha256,
        },
        job_variables=sized(where, declared, spec.parallel),
        tags=[spec.model_name],
        poll_interval=2,
    )
    state = run.state
    if state is None or not state.is_completed():
        said = f": {state.message}" if state is not None and state.message else ""
        ended = state.name if state is not None else "without a state"
        raise StageRunFailed(f"stage {spec.index}: flow run {run.name} on pool {where.work_pool!r} ended {ended}{said}")
    left = json.loads(workspace.storage().get(result_key(str(run.id))))
    if "refused" in left:
        raise StageRefused(left["refused"])  # a user's mistake, found on the worker: not retried
    return StageResult.model_validate(left)
