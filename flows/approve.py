"""A person approves a stage before it trains: ``stages.<i>.approve: true`` pauses the pipeline's flow run.

    check_approvals(config)           refuse in one line, before anything starts, what no person could resume
    approve(spec, timeout_s, card)    Prefect's pause_flow_run with an input form; returns when resumed

The pause is Prefect's own (``pause_flow_run(wait_for_input=...)``): the flow run is Paused, and the Prefect UI
shows a Resume button with a form whose description is the previous stage's model card (what it became, its
losses), and the one field ``approved``. Resumed with ``approved`` checked, the stage trains; unchecked, or not
resumed within ``stages.<i>.approve_timeout_s``, the flow run fails with one line. The process waits meanwhile
(it polls the API every few seconds); a registered stage is never asked about (it trains nothing).

It needs a Prefect server a person reaches (``PREFECT_API_URL``): the embedded default's temporary API lives in
the ``staged run`` process on a port nobody opens, and its pause could only time out, so it is refused.
"""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL
from prefect.states import Running

from models.errors import UserError
from tasks.config import PipelineConfig, StageSpec

POLL_S = 2  # how often the paused process asks the API whether it was resumed


class Approval(RunInput):
    """The form the Prefect UI shows to resume the flow run."""

    approved: bool = True  # uncheck to stop the pipeline before this stage


class NotApproved(UserError, RuntimeError):
    """A stage a person did not approve (refused, or not resumed in time): one line, never retried."""


def check_approvals(config: PipelineConfig, api_url: str | None = None) -> None:
    """An approval needs a Prefect server a person can open (``api_url``, default: Prefect's PREFECT_API_URL
    setting): refused before anything starts without one. ``staged run`` checks it before its flow starts, with
    the variable it decides on the embedded API by."""
    asked = [i for i, stage in enumerate(config.stages) if stage.approve]
    if asked and not (api_url if api_url is not None else PREFECT_API_URL.value()):
        raise NotApproved(
            f"stages.{asked[0]}.approve: a person resumes the paused flow run in the Prefect UI, and the embedded"
            " Prefect API has none anyone can reach: set PREFECT_API_URL to a Prefect server (staged servers up)"
        )


def description(spec: StageSpec, timeout_s: int, card: str | None) -> str:
    """The pause's message in the UI: what is about to train, and the previous stage's card."""
    what = f"stage {spec.index} ({spec.model.n_layers} layers, {spec.train.steps} steps) of {spec.model_name}"
    head = (
        f"# Approve {what}?\n\nResume with **approved** checked to train it; uncheck it to stop the pipeline here. "
        f"Not resumed within {timeout_s} s, the flow run fails.\n\n"
    )
    return head + (f"## The previous stage\n\n{card}" if card else "No stage has trained before it in this run.\n")


def approve(spec: StageSpec, timeout_s: int, card: str | None) -> None:
    """Pause this flow run until a person resumes it; raises NotApproved when refused or not resumed in time."""
    where = f"stages.{spec.index - 1}.approve"
    form = Approval.with_initial_data(description=description(spec, timeout_s, card), approved=True)
    page = f" ({ui}/runs/flow-run/{flow_run.id})" if (ui := PREFECT_UI_URL.value()) else ""
    get_run_logger().info(
        "stage %d waits for a person: resume flow run %s in the Prefect UI%s within %d s",
        *(spec.index, flow_run.name, page, timeout_s),
    )
    try:
        answer = pause_flow_run(
            wait_for_input=form, timeout=timeout_s, poll_interval=min(POLL_S, timeout_s), key=f"approve-{spec.index}"
        )
    except FlowPauseTimeout:
        # Prefect's server refuses every state after an expired pause but its own Failed ("The flow was ... never
        # resumed."), which would hide this line from the flow's state and from `staged run` (exit 1, no reason):
        # the pause is ended here, the flow run Running again, so that it fails with the line like any user error
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run.id, Running(message="approval timed out"), force=True)
        why = f"was not approved within {timeout_s} s (stages.{spec.index - 1}.approve_timeout_s)"
    else:
        if answer.approved:
            return
        why = "was refused in the Prefect UI"
    line = f"{where}: stage {spec.index} {why}: the pipeline stops before it"
    get_run_logger().error(line)
    raise NotApproved(line)
