import functools
import os

import pytest
from repo import REPO_ROOT

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers and tokenizers never reach the Hugging Face hub
# The test models are tiny: a second OpenMP thread only adds synchronisation (and spins against any
# other load on a 2-core machine). Subprocesses the tests start inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Nothing may reach the Hugging Face hub from a test: datasets and tokenizers read local files only.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# session fixtures too costly to build twice: under pytest-xdist, every module that asks for one runs on one worker
_SHARED = {"local_servers": "servers", "deployed_run": "servers", "gated_runs": "gated"}


@functools.cache
def _group(module: str) -> str:
    """The worker group of a test module: the first ``_SHARED`` fixture its source names, or the module itself."""
    text = (REPO_ROOT / module).read_text()
    return next((group for fixture, group in _SHARED.items() if fixture in text), module)


def pytest_xdist_make_scheduler(config, log):
    """`make test` runs two pytest-xdist workers. A worker takes whole groups (``_group``): a module, so that its
    module fixtures are built once, and all the modules of one costly session fixture. (xdist's own ``loadgroup``
    marks cannot do this under pytest 9: they rename a node through an attribute pytest no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid.split("::")[0])

    return ByGroup(config, log)


@pytest.fixture(autouse=True)
def _environment_as_it_was():
    """Each test ends with the environment it began with. ``staged run`` sets defaults for its own process
    (the embedded Prefect database in its workdir, MLflow's retries): a run in the test process would leak
    them into every later test's subprocesses (one then found its Prefect database in another's workdir)."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (~10 s to start on an idle machine). Given as long to start
    as `staged run` gives its own (flows/cli/run.py): a fresh database's migrations on 2 busy cores outlast
    Prefect's 30 s default."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty workdir with the embedded MLflow store (no MLFLOW_TRACKING_URI from the environment)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "work"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real HTTP S3 endpoint on 127.0.0.1 (moto), shared by the session; yields its URL."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


FAKE_KEY, FAKE_SECRET = "AKIAFAKEKEYFORTESTS1", "fake/secret+Xq93ZtT1sEcReT0nlyForTests"


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """AWS variables for the local S3 endpoint (test-scoped, never global) and a fresh bucket; yields its name."""
    import uuid

    env = {
        "AWS_ACCESS_KEY_ID": FAKE_KEY,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": s3_server,
        "MLFLOW_S3_ENDPOINT_URL": s3_server,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from tasks.store import s3_client

    bucket = f"b-{uuid.uuid4().hex[:12]}"
    s3_client().create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(scope="session")
def gated_runs(prefect_harness, tmp_path_factory):
    """Two smoke pipelines with different seeds in one embedded store, gated in a known order.

    1. seed 1, a few steps ("worse"): no champion yet, so its version 3 is promoted.
    2. seed 0, full smoke ("better"), with a margin larger than its gain: refused.
    3. the same run again (stages skipped, gate only) with the default margin: version 6 promoted.
    4. the worse run again (gate only): refused, the champion stays 6.
    Returns the workdir and the four final-version GateResults' tags, read after each step.
    """

    from flows.staged import staged_training
    from tasks.config import load_config
    from tasks.registry import Registry

    smoke = REPO_ROOT / "configs" / "smoke.yaml"
    worse = ["seed=1", "stages.0.steps=2", "stages.1.steps=1", "stages.2.steps=1"]
    workdir = tmp_path_factory.mktemp("gated")
    steps = [worse, ["gate.margin=100"], [], worse]
    snapshots = []
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        client = Registry.resolve(workdir).client()
        for overrides in steps:
            results = staged_training(load_config(smoke, overrides), str(workdir))
            mv = client.get_model_version("staged-smoke", results[-1].ref.version)
            champion = client.get_registered_model("staged-smoke").aliases.get("champion")
            snapshots.append(
                {"version": str(mv.version), "tags": dict(mv.tags), "champion": str(champion), "results": results}
            )
    return workdir, snapshots


@pytest.fixture(scope="session")
def local_servers(tmp_path_factory):
    """``staged servers up`` for real (Postgres, moto S3, Prefect server + process worker, MLflow
    server, all with credentials) on free loopback ports; stopped, data included, at the end of the session.
    The MLflow credentials are in this process's environment meanwhile (MlflowClient reads them from there),
    not the tracking URI: tests that use an embedded store are unaffected."""
    from deploy.local.servers import DEFAULT_PORTS, down, up

    dir = tmp_path_factory.mktemp("servers")
    try:
        servers = up(dir, {name: free_port() for name in DEFAULT_PORTS})
        env = servers.client_env()
        with pytest.MonkeyPatch.context() as mp:
            for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                mp.setenv(name, env[name])
            yield servers
    finally:
        down(dir, purge=True)


@pytest.fixture(scope="session")
def deployed_run(local_servers):
    """deploy/prefect.yaml deployed to `local_servers` and its `on-demand` deployment run by the worker."""
    from tests.deployed import deploy_and_run

    return deploy_and_run(local_servers)
