"""Stages on Prefect work pools, for real: `staged servers up` (Prefect server, MLflow on Postgres, S3), two
process work pools with real `prefect worker` processes (one pool with two workers), a three-stage smoke
pipeline with stage 1 on one pool and stages 2-3 on the other, started from the command line as a user would.
Each stage is its own flow run on its pool, a subflow of the pipeline's; the versions and lineage are those of
the same pipeline trained in-process. Two one-stage pipelines at once on a third pool, limited to one flow run by
Prefect's own work-pool concurrency limit, never overlap. What cannot work is refused in one line before anything
starts."""

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from repo import REPO_ROOT

from deploy.local.processes import stop_group
from deploy.local.servers import BUCKET
from flows.cli.main import main
from tasks.store.checkpoint import MANIFEST
from tests.deployed import api

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # ~5-9 min on 2 busy cores (servers, pool c included)
SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")
POOLS = {"staged-pool-a": 1, "staged-pool-b": 2, "staged-pool-c": 1}  # pool -> workers
# pool c: Prefect's own work-pool concurrency limit of 1 (a process worker alone would run both stages at once);
# two one-stage pipelines beside the others, each with its stage on it
LIMITED, QUEUED = "staged-pool-c", ["staged-queue-1", "staged-queue-2"]
ONE_STAGE = ["stages=[{n_layers: 2, steps: 4}]", f"worker.work_pool={LIMITED}"]
# stage 2 long enough, and checkpointed often enough, to be killed in the middle of its training
SHORT = ["stages.0.steps=6", "stages.1.steps=400", "stages.1.checkpoint.every=5", "stages.2.steps=2"]
SHORT += ["gate.enabled=false"]
STAGE_2 = "staged-pools-stage-2-6L"


def _env(servers, **extra: str) -> dict[str, str]:
    return {**os.environ, **servers.client_env(), "PYTHONPATH": str(REPO_ROOT), **extra}


@pytest.fixture(scope="module")
def workers(local_servers, tmp_path_factory):
    """Real process workers: each `prefect worker start` creates its pool (deploy/work-pools/process.json)."""
    logs, procs = tmp_path_factory.mktemp("workers"), []
    template = REPO_ROOT / "deploy" / "work-pools" / "process.json"
    try:
        for pool, n in POOLS.items():
            if pool == LIMITED:  # created with its limit before its worker starts (else the worker creates the pool)
                _prefect_cli(local_servers, logs, "work-pool", "create", pool, "--type", "process")
                _prefect_cli(local_servers, logs, "work-pool", "set-concurrency-limit", pool, "1")
            for k in range(n):
                argv = [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", pool]
                argv += ["--type", "process", "--base-job-template", str(template), "--name", f"{pool}-{k}"]
                env = _env(local_servers, PREFECT_HOME=str(logs / f"home-{pool}-{k}"), PREFECT_WORKER_QUERY_SECONDS="2")
                with open(logs / f"{pool}-{k}.log", "wb") as out:
                    procs.append(
                        subprocess.Popen(
                            argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=logs, start_new_session=True
                        )
                    )
        yield procs
    finally:
        for proc in procs:
            stop_group(proc.pid, grace=10)


def _prefect_cli(servers, logs: Path, *args: str) -> None:
    """The `prefect` command line as a user would run it, against the servers."""
    argv = [str(Path(sys.executable).parent / "prefect"), *args]
    out = subprocess.run(argv, env=_env(servers, PREFECT_HOME=str(logs / "home-cli")), capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def _staged(servers, *args: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "flows.cli.main", "run", SMOKE, *args]
    return subprocess.Popen(
        argv, cwd=REPO_ROOT, env=_env(servers), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _versions(servers, name: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=servers.urls["mlflow"])
    return sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))


@pytest.fixture(scope="module")
def pooled(local_servers, workers, tmp_path_factory):
    """The smoke pipeline with stage 1 on pool a and stages 2-3 on pool b, and beside it the same in-process
    (at the same time: the pooled one mostly waits for its workers), and two one-stage pipelines on the limited
    pool c; yields the servers and each run's stdout."""
    began, runs, prefixes = time.monotonic(), {}, {}
    for name, where in {
        "staged-pools": ["stages.0.work_pool=staged-pool-a", "worker.work_pool=staged-pool-b", "retry.retries=1"],
        "staged-pools-local": [],
        **{name: ONE_STAGE for name in QUEUED},
    }.items():
        workdir, prefixes[name] = tmp_path_factory.mktemp(name), uuid.uuid4().hex[:8]
        sets = [*SHORT, *where, f"registry.model_name={name}", f"storage.uri=s3://{BUCKET}/{prefixes[name]}"]
        sets += ["retry.delay_s=0"]
        runs[name] = _staged(local_servers, "--workdir", str(workdir), *[a for s in sets for a in ("--set", s)])
    killed = _kill_during_stage_2(local_servers, workers, prefixes["staged-pools"])
    for name, proc in runs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:] + err[-3000:]
        runs[name] = out
    print(f"both pipelines: {time.monotonic() - began:.0f} s", file=sys.stderr)
    return local_servers, runs, killed


def _stage_2_runs(servers) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    runs = FlowRunFilter(name=FlowRunFilterName(any_=[STAGE_2]))
    return api(servers, lambda c: c.read_flow_runs(flow_run_filter=runs))


def _kill_during_stage_2(servers, workers, prefix: str) -> dict:
    """SIGKILL the worker running stage 2, and the stage's process, once stage 2 has written a checkpoint."""
    import boto3
    import psutil

    env = servers.client_env()
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )

    def stage_dirs() -> set[str]:
        """The stage keys with a complete checkpoint: its manifest is written last (tasks/store/checkpoint.py); a
        stage's first object alone may be a checkpoint still being written, which a retry could not resume from."""
        found = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/checkpoints/").get("Contents", [])
        return {o["Key"].split("/")[2] for o in found if o["Key"].endswith(f"/{MANIFEST}")}

    deadline, before, run = time.monotonic() + 400, None, None
    while time.monotonic() < deadline:
        running = [r for r in _stage_2_runs(servers) if r.state.is_running() and r.infrastructure_pid]
        if running and before is None:
            run, before = running[0], stage_dirs()
        if before is not None and stage_dirs() - before:
            break
        time.sleep(0.3)
    else:
        pytest.fail("stage 2 never wrote a checkpoint on its pool")
    stage = psutil.Process(int(run.infrastructure_pid.rsplit(":", 1)[-1]))
    ours = {p.pid for p in workers}
    worker = next(p.pid for p in stage.parents() if p.pid in ours)  # only a worker this test started
    doomed = [stage, *stage.children(recursive=True)]  # the stage's process (own session) and anything it started
    os.killpg(worker, signal.SIGKILL)  # the worker's process group
    for process in doomed:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    return {"flow_run_id": run.id, "at": datetime.now(timezone.utc)}


def test_each_stage_is_a_flow_run_on_its_pool_under_the_pipeline(pooled):
    pooled, _, _ = pooled
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    stage_runs = api(
        pooled, lambda c: c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["staged-stage"])))
    )
    stage_runs = sorted((r for r in stage_runs if "staged-pools" in r.tags), key=lambda r: (r.name, r.state.name))
    assert [(r.name, r.work_pool_name, r.state.name) for r in stage_runs] == [
        ("staged-pools-stage-1-3L", "staged-pool-a", "Completed"),
        ("staged-pools-stage-2-6L", "staged-pool-b", "Completed"),  # the retry, on the other worker
        ("staged-pools-stage-2-6L", "staged-pool-b", "Crashed"),  # its worker SIGKILLed
        ("staged-pools-stage-3-12L", "staged-pool-b", "Completed"),
    ]
    # each is a subflow: its parent task run belongs to the one pipeline flow run
    parents = {api(pooled, lambda c, r=r: c.read_task_run(r.parent_task_run_id)).flow_run_id for r in stage_runs}
    assert len(parents) == 1
    pipeline = api(pooled, lambda c: c.read_flow_run(parents.pop()))
    assert pipeline.name.startswith("staged-pools-") and pipeline.state.is_completed()


def test_a_pool_concurrency_limit_queues_the_stages_of_several_pipelines(pooled):
    """Two pipelines at once, each with its one stage on pool c (limit 1): Prefect's worker takes the second stage's
    flow run only when the first has ended; both pipelines complete."""
    servers, _, _ = pooled
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    pool = api(servers, lambda c: c.read_work_pool(LIMITED))
    assert pool.concurrency_limit == 1
    runs = api(
        servers,
        lambda c: c.read_flow_runs(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[LIMITED])), sort=FlowRunSort.START_TIME_ASC
        ),
    )
    assert sorted(r.name.rsplit("-stage-", 1)[0] for r in runs) == QUEUED
    assert all(r.state.is_completed() for r in runs), [(r.name, r.state.name) for r in runs]
    first, second = runs
    assert first.end_time <= second.start_time, (first.end_time, second.start_time)  # never overlapped
    assert second.created < first.end_time  # ...though the second was waiting meanwhile: queued, not late
    waited = (second.start_time - second.created).total_seconds()
    print(f"pool limit 1: the second pipeline's stage waited {waited:.0f} s for the first", file=sys.stderr)


def test_a_killed_worker_is_marked_crashed_and_the_stage_resumes_on_another(pooled):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    servers, _, killed = pooled
    runs = {r.id: r for r in _stage_2_runs(servers)}
    crashed = runs.pop(killed["flow_run_id"])
    assert crashed.state.is_crashed() and "no heartbeat" in crashed.state.message
    silent = (crashed.state.timestamp - killed["at"]).total_seconds()
    print(f"killed worker: its stage's flow run marked Crashed {silent:.0f} s later", file=sys.stderr)
    assert silent <= 120
    (retry,) = runs.values()
    pipelines = {
        api(servers, lambda c, r=r: c.read_task_run(r.parent_task_run_id)).flow_run_id for r in (retry, crashed)
    }
    assert len(pipelines) == 1  # both subflows of the one pipeline flow run: its stage task, retried
    logs = api(servers, lambda c: c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[retry.id]))))
    assert any("resuming from checkpoint step" in log.message for log in logs), [log.message for log in logs]


def test_versions_and_lineage_are_those_of_an_in_process_run(pooled):
    """Stage 2's worker was killed in the middle of it: the weights are still the unbroken run's, bit for bit."""
    pooled, _, _ = pooled
    pooled_versions, local = _versions(pooled, "staged-pools"), _versions(pooled, "staged-pools-local")
    assert [v.tags["parent_version"] for v in pooled_versions] == ["", "1", "2"]
    for key in ("stage", "n_layers", "weights_sha256", "optimizer_sha256", "data_cursor", "global_step"):
        assert [v.tags[key] for v in pooled_versions] == [v.tags[key] for v in local], key


def test_gpu_seconds_per_stage_and_against_one_allocation(pooled):
    servers, stdout, _ = pooled
    from mlflow import MlflowClient

    versions = _versions(servers, "staged-pools")
    assert all(float(v.tags["gpu_seconds"]) > 0 for v in versions)  # one process each: its wall seconds
    client = MlflowClient(tracking_uri=servers.urls["mlflow"])
    parent = client.get_run(client.get_run(versions[0].run_id).data.tags["mlflow.parentRunId"])
    total, single = parent.data.metrics["gpu_seconds"], parent.data.metrics["gpu_seconds_one_allocation"]
    assert total == pytest.approx(sum(float(v.tags["gpu_seconds"]) for v in versions), rel=0.2) and single > 0
    line = next(line for line in stdout["staged-pools"].splitlines() if line.startswith("GPU-seconds"))
    assert "for this run's stages" in line and "one allocation of 1 process held for the whole run" in line, line
    print(line, file=sys.stderr)


@pytest.mark.parametrize(
    "sets, message",
    [
        (["worker.work_pool=no-such-pool"], "stages.0.work_pool 'no-such-pool': no such work pool"),
        (
            ["stages.1.work_pool=staged-pool-b", "stages.1.job_variables={gpu_count: 1}"],
            "stages.1.job_variables: gpu_count not declared by work pool 'staged-pool-b'",
        ),
        (["worker.work_pool=staged-pool-a"], "checkpoints go to /"),  # no storage.uri: under the workdir
    ],
    ids=["missing-pool", "unknown-job-variable", "local-checkpoints"],
)
def test_what_cannot_work_is_refused_in_one_line(local_servers, workers, tmp_path, monkeypatch, capsys, sets, message):
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    env = local_servers.client_env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    name = f"refused-{uuid.uuid4().hex[:6]}"
    s3 = [] if message.startswith("checkpoints") else [f"storage.uri=s3://{BUCKET}/{name}"]
    args = ["run", SMOKE, "--workdir", str(tmp_path / "w")]
    for s in [*s3, f"registry.model_name={name}", *sets]:
        args += ["--set", s]
    settings = {PREFECT_API_URL: env["PREFECT_API_URL"], PREFECT_API_AUTH_STRING: env["PREFECT_API_AUTH_STRING"]}
    with temporary_settings(settings), pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and message in err[0], err
    assert _versions(local_servers, name) == []


def test_a_local_registry_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["run", SMOKE, "--workdir", str(tmp_path / "w"), "--set", "stages.1.work_pool=gpu"]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1, err
    assert "stages.1.work_pool 'gpu': the registry sqlite:" in err[0] and "is local to this machine" in err[0]
    assert not (tmp_path / "w" / "mlflow.db").exists()
