"""Stages on Prefect work pools, for real: `staged servers up` (Prefect server, MLflow on Postgres, S3), two
process work pools with real `prefect worker` processes (one pool with two workers), a three-stage smoke
pipeline with stage 1 on one pool and stages 2-3 on the other, started from the command line as a user would.
Each stage is its own flow run on its pool, a subflow of the pipeline's; the versions and lineage are those of
the same pipeline trained in-process. What cannot work is refused in one line before anything starts."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from repo import REPO_ROOT

from deploy.local.processes import stop_group
from deploy.local.servers import BUCKET
from flows.cli.main import main
from tests.deployed import api

pytestmark = pytest.mark.integration
SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")
POOLS = {"staged-pool-a": 1, "staged-pool-b": 2}  # pool -> workers
SHORT = ["stages.0.steps=6", "stages.1.steps=4", "stages.2.steps=2", "gate.enabled=false"]


def _env(servers, **extra: str) -> dict[str, str]:
    return {**os.environ, **servers.client_env(), "PYTHONPATH": str(REPO_ROOT), **extra}


@pytest.fixture(scope="module")
def workers(local_servers, tmp_path_factory):
    """Real process workers: each `prefect worker start` creates its pool (deploy/work-pools/process.json)."""
    logs, procs = tmp_path_factory.mktemp("workers"), []
    template = REPO_ROOT / "deploy" / "work-pools" / "process.json"
    try:
        for pool, n in POOLS.items():
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


def _staged(servers, *args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "flows.cli.main", "run", SMOKE, *args]
    return subprocess.run(argv, cwd=REPO_ROOT, env=_env(servers), capture_output=True, text=True, timeout=600)


def _versions(servers, name: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=servers.urls["mlflow"])
    return sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))


@pytest.fixture(scope="module")
def pooled(local_servers, workers, tmp_path_factory):
    """The smoke pipeline with stage 1 on pool a and stages 2-3 on pool b, then the same in-process."""
    runs = {}
    for name, where in {
        "staged-pools": ["stages.0.work_pool=staged-pool-a", "worker.work_pool=staged-pool-b"],
        "staged-pools-local": [],
    }.items():
        workdir = tmp_path_factory.mktemp(name)
        sets = [*SHORT, *where, f"registry.model_name={name}", f"storage.uri=s3://{BUCKET}/{uuid.uuid4().hex[:8]}"]
        out = _staged(local_servers, "--workdir", str(workdir), *[a for s in sets for a in ("--set", s)])
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        runs[name] = out
    return local_servers


def test_each_stage_is_a_flow_run_on_its_pool_under_the_pipeline(pooled):
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    stage_runs = api(
        pooled, lambda c: c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["staged-stage"])))
    )
    stage_runs = sorted((r for r in stage_runs if "staged-pools" in r.tags), key=lambda r: r.name)
    assert [(r.name, r.work_pool_name) for r in stage_runs] == [
        ("staged-pools-stage-1-3L", "staged-pool-a"),
        ("staged-pools-stage-2-6L", "staged-pool-b"),
        ("staged-pools-stage-3-12L", "staged-pool-b"),
    ]
    assert all(r.state.is_completed() for r in stage_runs)
    # each is a subflow: its parent task run belongs to the one pipeline flow run
    parents = {api(pooled, lambda c, r=r: c.read_task_run(r.parent_task_run_id)).flow_run_id for r in stage_runs}
    assert len(parents) == 1
    pipeline = api(pooled, lambda c: c.read_flow_run(parents.pop()))
    assert pipeline.name.startswith("staged-pools-") and pipeline.state.is_completed()


def test_versions_and_lineage_are_those_of_an_in_process_run(pooled):
    pooled_versions, local = _versions(pooled, "staged-pools"), _versions(pooled, "staged-pools-local")
    assert [v.tags["parent_version"] for v in pooled_versions] == ["", "1", "2"]
    for key in ("stage", "n_layers", "weights_sha256", "optimizer_sha256", "data_cursor", "global_step"):
        assert [v.tags[key] for v in pooled_versions] == [v.tags[key] for v in local], key


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
