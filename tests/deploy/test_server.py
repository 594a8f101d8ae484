"""The same pipeline and commands against a real MLflow server on loopback, and `staged serve` (which runs
`mlflow models serve` on a verified copy of the version)."""

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from repo import REPO_ROOT

from deploy.local.processes import wait_healthy
from flows.cli.main import main
from flows.staged import staged_training
from tasks.config import load_config
from tasks.registry import Registry, load_model, load_pyfunc, resolve
from tests.conftest import free_port

pytestmark = pytest.mark.integration
ROOT = REPO_ROOT
MLFLOW = str(Path(sys.executable).parent / "mlflow")
SHORT = ["stages.0.steps=4", "stages.1.steps=2", "stages.2.steps=1"]


def _start(args: list[str], log: Path, health: str, env: dict | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    try:
        wait_healthy(health, health, proc, log, timeout=120)
    except BaseException:
        _stop(proc)
        raise
    return proc


def _stop(proc: subprocess.Popen) -> None:
    """By PID: the CLI stops its own children (uvicorn workers) on SIGTERM."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    args = [
        MLFLOW,
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        (root / "artifacts").as_uri(),
    ]
    proc = _start(args, root / "server.log", f"http://127.0.0.1:{port}/health", env)
    yield f"http://127.0.0.1:{port}", root
    _stop(proc)


@pytest.fixture(scope="module")
def served_run(server, prefect_harness, tmp_path_factory):
    url, _ = server
    workdir = tmp_path_factory.mktemp("server-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", url)
        results = staged_training(load_config(ROOT / "configs" / "smoke.yaml", SHORT), str(workdir))
    return url, workdir, results


def test_pipeline_gate_and_commands_against_the_server(served_run, capsys, monkeypatch):
    url, workdir, results = served_run
    assert not (workdir / "mlflow.db").exists()  # everything went to the server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("COLUMNS", "200")
    registry = Registry.resolve(workdir)
    assert registry.client().get_model_version("staged-smoke", "3").tags["gate_decision"] == "promoted"
    assert main(["models", "list", "staged-smoke"]) == 0
    listing = capsys.readouterr().out
    assert "champion, stage-3" in listing and "promoted" in listing
    assert main(["eval", "models:/staged-smoke@champion"]) == 0
    assert "bits/byte" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["eval", "models:/staged-smoke@nope"])
    assert e.value.code == 2 and "has no alias 'nope'" in capsys.readouterr().err
    # the real command, as a user runs it
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli.main",
            "generate",
            "models:/staged-smoke@champion",
            "--prompt",
            "def ",
            "--max-bytes",
            "20",
        ],
        cwd=workdir,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("def "), proc.stderr[-2000:]
    assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints", "staged-smoke-loss.png"]  # no local store


def test_prefect_artifacts_link_to_each_stages_mlflow_run_and_version_pages(served_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    url, _, results = served_run
    client = Registry(tracking_uri=url).client()
    keys = [f"staged-smoke-stage-{r.ref.stage}-{kind}" for r in results for kind in ("run", "version", "summary")]
    with get_client(sync_client=True) as prefect:
        found = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys + ["staged-smoke-pipeline-run"]))
        )
    latest = {a.key: a.data for a in sorted(found, key=lambda a: a.created)}
    for r in results:
        page = f"{url}/#/experiments/{client.get_run(r.ref.run_id).info.experiment_id}/runs/{r.ref.run_id}"
        version_page = f"{url}/#/models/staged-smoke/versions/{r.ref.version}"
        assert (
            f"({page})" in latest[f"staged-smoke-stage-{r.ref.stage}-run"]
            and f"({page})" in latest[f"staged-smoke-stage-{r.ref.stage}-summary"]
        )
        assert f"({version_page})" in latest[f"staged-smoke-stage-{r.ref.stage}-version"]
    parent = client.get_run(client.get_run(results[0].ref.run_id).data.tags["mlflow.parentRunId"])
    assert f"/runs/{parent.info.run_id})" in latest["staged-smoke-pipeline-run"] and parent.info.status == "FINISHED"
    with urllib.request.urlopen(page.split("#")[0], timeout=10) as r:  # the UI that serves those pages
        assert r.status == 200


def test_pyfunc_and_mlflow_models_serve_match_the_project_loader(served_run, tmp_path):
    url, _, _ = served_run
    registry = Registry(tracking_uri=url)
    ids = np.array([list(b"def f(x):\n")], dtype=np.int64)
    with torch.no_grad():
        expected = load_model(registry, resolve(registry, "models:/staged-smoke@champion"))(
            torch.from_numpy(ids)
        ).numpy()
    assert np.array_equal(load_pyfunc(registry, "models:/staged-smoke@champion").predict(ids), expected)

    port = free_port()
    bin_dir = str(Path(MLFLOW).parent)  # `mlflow models serve` execs `uvicorn` by name, as in an activated venv
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": url,
        "PYTHONPATH": str(ROOT),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    # `staged serve`: `mlflow models serve` of a local copy verified against the version's manifest
    args = [sys.executable, "-m", "flows.cli.main", "serve", "models:/staged-smoke@champion", "--port", str(port)]
    proc = _start(args, tmp_path / "serve.log", f"http://127.0.0.1:{port}/ping", env)
    try:
        body = json.dumps({"inputs": ids.tolist()}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            got = np.array(json.load(r)["predictions"], dtype=np.float32)
    finally:
        _stop(proc)
    assert np.array_equal(got, expected)
