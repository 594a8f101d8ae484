"""``stages.<i>.approve``: the pipeline's flow run pauses before that stage (Prefect's pause_flow_run, with an input
form whose description is the previous stage's card) until a person resumes it, here through the Prefect API as the
UI's Resume button does; not resumed in time, the flow run fails with one line. On the session's real Prefect API
(prefect_test_harness) and an embedded MLflow store. The embedded-Prefect refusal: tests/flows/test_bad_input.py."""

import contextvars
import sys
import threading
import time

import pytest
from repo import REPO_ROOT

pytestmark = [pytest.mark.integration]

SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")
TWO = ["stages=[{n_layers: 2, steps: 4}, {n_layers: 4, steps: 2, growth: {operator: stack}}]", "gate.enabled=false"]


def _paused(name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    paused = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(state=paused, tags=FlowRunFilterTags(all_=[name])))


def _flow_runs(name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[name])))


def _logs(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))


def _versions(workdir, name: str) -> list[str]:
    from tasks.registry import Registry

    found = Registry.resolve(workdir).client().search_model_versions(f"name='{name}'")
    return sorted(str(v.version) for v in found)


def _person(workdir, name: str, answer: dict | None, seen: dict) -> threading.Thread:
    """Beside the flow: waits for its flow run to be Paused, reads what the UI shows, and resumes it with
    ``answer`` (None: never); the thread sees the test's Prefect settings (the harness's API)."""
    from prefect.client.orchestration import get_client
    from prefect.input.run_input import keyset_from_paused_state

    def watch() -> None:
        deadline = time.monotonic() + 300
        while not (runs := _paused(name)):
            if time.monotonic() > deadline:
                return
            time.sleep(0.3)
        (run,) = runs
        seen["paused_at"], seen["versions"] = time.monotonic(), _versions(workdir, name)
        with get_client(sync_client=True) as client:
            seen["description"] = client.read_flow_run_input(run.id, keyset_from_paused_state(run.state)["description"])
            if answer is not None:
                seen["resumed"] = client.resume_flow_run(run.id, run_input=answer).status.value

    thread = threading.Thread(target=contextvars.copy_context().run, args=(watch,), daemon=True)
    thread.start()
    return thread


def test_an_approved_stage_trains_once_a_person_resumes_the_flow_run(prefect_harness, workdir):
    from flows.staged import staged_training
    from tasks.config import load_config

    name = "staged-approve"
    config = load_config(SMOKE, [*TWO, "stages.1.approve=true", f"registry.model_name={name}"])
    seen: dict = {}
    person = _person(workdir, name, {"approved": True}, seen)
    results = staged_training(config, str(workdir))
    person.join(timeout=60)
    assert seen["resumed"] == "ACCEPT"
    assert seen["versions"] == ["1"]  # paused after stage 1 registered, before stage 2
    description = seen["description"]
    assert "Approve stage 2 (4 layers, 2 steps) of staged-approve?" in description, description
    assert "# staged-approve version 1: stage 1, 2 layers" in description  # the previous stage's model card
    assert [(r.ref.version, r.skipped) for r in results] == [("1", False), ("2", False)]
    assert _versions(workdir, name) == ["1", "2"]


def test_a_stage_not_approved_in_time_fails_the_flow_run_in_one_line(prefect_harness, workdir, monkeypatch, capsys):
    """Through `staged run` as a person runs it against a Prefect server: exit 2, the one line on stderr."""
    from prefect.settings import PREFECT_API_URL

    from flows.cli.main import main

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # the session's server, as a user's variable
    name = "staged-approve-timeout"
    sets = [*TWO, "stages.1.approve=true", "stages.1.approve_timeout_s=2", f"registry.model_name={name}"]
    seen: dict = {}
    person = _person(workdir, name, None, seen)  # nobody answers
    with pytest.raises(SystemExit) as exit_:
        main(["run", SMOKE, "--workdir", str(workdir), *[a for s in sets for a in ("--set", s)]])
    person.join(timeout=60)
    message = (
        "stages.1.approve: stage 2 was not approved within 2 s (stages.1.approve_timeout_s): the pipeline stops"
        " before it"
    )
    err = capsys.readouterr().err.strip().splitlines()  # Prefect's log lines (this process's flow), then ours
    print(err[-1], file=sys.stderr)
    assert exit_.value.code == 2 and err[-1].startswith("staged: error: ") and message in err[-1], err[-3:]
    assert [line for line in err if line.startswith("staged:")] == [err[-1]]
    assert "No stage" not in seen["description"] and seen["versions"] == ["1"]
    assert _versions(workdir, name) == ["1"]  # stage 2 never trained
    (run,) = _flow_runs(name)
    assert run.state.is_failed() and message in run.state.message, run.state  # what the Prefect UI shows
    deadline = time.monotonic() + 30  # logs reach the API in batches
    while not any(message in log.message for log in _logs(run.id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert any(message in log.message for log in _logs(run.id))  # the line, in the flow run's log in the UI


def test_a_refusal_in_the_form_stops_the_pipeline(prefect_harness, workdir):
    from flows.approve import NotApproved
    from flows.staged import staged_training
    from tasks.config import load_config

    name = "staged-approve-refused"
    sets = [*TWO, "stages.0.approve=true", f"registry.model_name={name}"]
    seen: dict = {}
    person = _person(workdir, name, {"approved": False}, seen)
    with pytest.raises(NotApproved, match="stages.0.approve: stage 1 was refused in the Prefect UI"):
        staged_training(load_config(SMOKE, sets), str(workdir))
    person.join(timeout=60)
    assert "No stage has trained before it" in seen["description"] and seen["versions"] == []
    assert _versions(workdir, name) == []
