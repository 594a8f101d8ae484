"""`staged servers`: the local topology starts for real, is healthy, answers only with credentials, keeps its
data through a crash and `down`, and stops without leftovers."""

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from repo import REPO_ROOT

from deploy.local.servers import DEFAULT_PORTS, Servers, down, up
from tests.conftest import free_port

ROOT = REPO_ROOT
pytestmark = pytest.mark.integration


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _staged(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_up_starts_healthy_servers_on_loopback_with_postgres_backends(local_servers):
    s = local_servers
    assert _get(f"{s.urls['prefect']}/api/health") == 200
    assert _get(f"{s.urls['mlflow']}/health") == 200
    assert _get(f"http://127.0.0.1:{s.ports['worker']}/health") == 200
    import psycopg

    with psycopg.connect(s.postgres_url("postgres")) as conn:
        dbs = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        assert {"prefect", "mlflow"} <= dbs
    with psycopg.connect(s.postgres_url("mlflow")) as conn:  # MLflow migrated its schema into Postgres
        assert (
            conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'registered_models'"
            ).fetchone()[0]
            == 1
        )
    with psycopg.connect(s.postgres_url("prefect")) as conn:
        assert (
            conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'flow_run'").fetchone()[0]
            == 1
        )
    record = json.loads((Path(s.dir) / "servers.json").read_text())
    assert list(record["pids"]) == ["s3", "prefect", "mlflow", "worker"]
    assert all((Path(s.dir) / "logs" / f"{name}.log").is_file() for name in ["postgres", *record["pids"]])


def test_env_prints_what_a_shell_needs(local_servers):
    out = _staged("servers", "env", "--dir", local_servers.dir)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert f"export PREFECT_API_URL={local_servers.urls['prefect']}/api" in lines
    assert f"export MLFLOW_TRACKING_URI={local_servers.urls['mlflow']}" in lines
    env = local_servers.client_env()
    for name in ("PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert f"export {name}={env[name]}" in lines


def _status(url: str, auth: str | None = None, body: bytes | None = None) -> int:
    import base64
    import urllib.error

    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_requests_without_credentials_are_refused(local_servers):
    """Prefect's API, MLflow's API and its artifact proxy, and Postgres answer only with credentials."""
    import psycopg

    s, env = local_servers, local_servers.client_env()
    prefect, mlflow = f"{s.urls['prefect']}/api/flows/filter", f"{s.urls['mlflow']}/api/2.0/mlflow/experiments/search"
    assert _status(prefect, body=b"{}") == 401
    assert _status(prefect, "staged:wrong-password", body=b"{}") == 401
    assert _status(prefect, env["PREFECT_API_AUTH_STRING"], body=b"{}") == 200
    admin = f"{env['MLFLOW_TRACKING_USERNAME']}:{env['MLFLOW_TRACKING_PASSWORD']}"
    assert _status(f"{mlflow}?max_results=1") == 401
    assert _status(f"{mlflow}?max_results=1", "admin:wrong-password") == 401
    assert _status(f"{mlflow}?max_results=1", admin) == 200
    assert _status(f"{s.urls['mlflow']}/api/2.0/mlflow-artifacts/artifacts") == 401  # the artifacts too
    assert _status(f"{s.urls['mlflow']}/api/2.0/mlflow-artifacts/artifacts", admin) == 200
    dsn = {"host": "127.0.0.1", "port": s.ports["postgres"]}
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(**dsn, user="postgres", dbname="postgres", password="", connect_timeout=5)
    with pytest.raises(psycopg.OperationalError, match="permission denied|not permitted"):  # Prefect's role
        psycopg.connect(**dsn, user="prefect", dbname="mlflow", password=s.secrets()["prefect_db"], connect_timeout=5)
    record = json.loads((Path(s.dir) / "servers.json").read_text())
    assert all(s.running(name) for name in record["pids"])
    assert (Path(s.dir) / "secrets.json").stat().st_mode & 0o777 == 0o600


def test_a_busy_port_is_a_one_line_error_and_nothing_starts(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _staged("servers", "up", "--dir", str(tmp_path), "--prefect-port", str(port))
    assert out.returncode == 1
    assert (
        out.stderr.strip()
        == f"staged: error: port {port} (prefect) is already in use on 127.0.0.1: pass --prefect-port"
    )
    assert Servers.load(tmp_path) is None


def test_status_without_servers_says_how_to_start_them(tmp_path):
    out = _staged("servers", "status", "--dir", str(tmp_path))
    assert out.returncode == 1
    assert "staged servers up" in out.stderr and "Traceback" not in out.stderr


def _register_one(servers: Servers, tmp_path: Path, monkeypatch) -> str:
    """A real registration (stage 1 of smoke.yaml, untrained) on the servers; returns its manifest sha256."""
    from models.families.gpt import GPT
    from tasks.config import load_config
    from tasks.registry import Registry, register
    from tasks.store import save_model
    from tests.versions import stage1_tags, stage_params

    for key, value in servers.client_env().items():
        monkeypatch.setenv(key, value)
    spec = load_config(ROOT / "configs" / "smoke.yaml").stage_specs()[0]
    out = tmp_path / "model"
    tags = stage1_tags(save_model(GPT(spec.model), out), "k")
    params = stage_params(spec)
    ref = register(Registry.resolve(tmp_path), "kept", "kept", model_dir=out, tags=tags, params=params, metrics={})
    return ref.manifest_sha256


def _versions_verify(tmp_path: Path) -> list[str]:
    from tasks.registry import Registry, download_with_optimizer, get_version

    registry = Registry.resolve(tmp_path)
    found = registry.client().search_model_versions("name = 'kept'")
    for v in found:
        ref = get_version(registry.client(), "kept", v.version)
        download_with_optimizer(registry, ref, tmp_path / f"dl-{v.version}")
    return [str(v.version) for v in found]


def test_a_killed_worker_then_up_keeps_every_version_and_only_purge_deletes(tmp_path, monkeypatch):
    ports = {name: free_port() for name in DEFAULT_PORTS}
    servers = up(tmp_path / "s", ports)
    _register_one(servers, tmp_path, monkeypatch)
    os.killpg(servers.pids["worker"], 9)  # the worker crashes
    os.waitpid(servers.pids["worker"], 0)  # reaped: our child (a real crash leaves no zombie to us)
    again = up(tmp_path / "s", ports)  # restarts the set on the same data: nothing is deleted
    assert all(again.running(name) for name in again.pids) and again.pgdata == servers.pgdata
    assert _versions_verify(tmp_path) == ["1"]  # the version, and its artifacts, verified against the manifest

    pids = dict(again.pids)
    assert down(tmp_path / "s") == ["worker", "mlflow", "prefect", "s3", "postgres"]
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # no process of any group is left
    assert not any(_listening(p) for p in ports.values())
    assert (Path(servers.pgdata) / "PG_VERSION").is_file() and any((tmp_path / "s" / "artifacts").rglob("*"))
    assert down(tmp_path / "s", purge=True) == []  # nothing left to stop; the data goes
    assert not Path(servers.pgdata).exists() and not (tmp_path / "s" / "artifacts").exists()
    assert not (tmp_path / "s" / "secrets.json").exists() and Servers.load(tmp_path / "s") is None
