"""One stage as its own flow run: what a work pool's worker runs for a stage with ``work_pool`` set.

    staged_stage(spec, parent, workspace, parent_run_id, tokenizer_sha256)   (the ``staged-stage`` flow)

Started by the parent pipeline (flows/pools.py) through the ``staged-stage/<pool>`` deployment, its parameters
JSON (a StageSpec, a ModelRef, a Workspace: configs and references, never a pickled bundle). It runs the stage
task of an in-process stage (tasks/stage.py: the key, skip if registered, resume from the newest checkpoint,
train, register) and leaves its StageResult as JSON in the checkpoint storage under ``result_key`` of this flow
run, where the parent reads it; a refusal (a user's mistake) is left there as its one line instead.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from models.errors import UserError
from tasks.config import StageSpec
from tasks.registry import ModelRef
from tasks.stage import run_stage
from tasks.workspace import Workspace

STAGE_FLOW = "staged-stage"


def result_key(flow_run_id: str) -> str:
    """Where a stage's flow run leaves its result in the checkpoint storage."""
    return f"stage-results/{flow_run_id}.json"


def stage_run_name() -> str:
    spec = flow_run.parameters["spec"]
    spec = spec if isinstance(spec, dict) else spec.model_dump()
    return f"{spec['model_name']}-stage-{spec['index']}-{spec['model']['n_layers']}L"


@flow(name=STAGE_FLOW, flow_run_name=stage_run_name, persist_result=False)  # the result travels as JSON, below
def staged_stage(
    spec: StageSpec,
    parent: ModelRef | None,
    workspace: Workspace,
    parent_run_id: str | None = None,
    tokenizer_sha256: str | None = None,
) -> None:
    """Train (or find registered) stage ``spec.index`` on this worker; the derived-file cache is this machine's."""
    workspace = workspace.model_copy(update={"cache_dir": str(Path(".staged", "cache").resolve())})
    storage, key = workspace.storage(), result_key(str(flow_run.id))
    try:
        result = run_stage(spec, parent, workspace, parent_run_id, tokenizer_sha256)
    except UserError as e:
        storage.put(key, json.dumps({"refused": str(e)}).encode())
        raise
    storage.put(key, result.model_dump_json().encode())
