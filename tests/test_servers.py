"""`staged servers`: the local topology starts for real, is healthy, and stops without leftovers."""

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from deploy.local.servers import DEFAULT_PORTS, Servers, down, up
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
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

    with psycopg.connect(f"{s.urls['postgres']}/postgres") as conn:
        dbs = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        assert {"prefect", "mlflow"} <= dbs
    with psycopg.connect(f"{s.urls['postgres']}/mlflow") as conn:  # MLflow migrated its schema into Postgres
        assert (
            conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'registered_models'"
            ).fetchone()[0]
            == 1
        )
    with psycopg.connect(f"{s.urls['postgres']}/prefect") as conn:
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
    assert f"export PREFECT_API_URL={local_servers.urls['prefect']}/api" in out.stdout.splitlines()
    assert f"export MLFLOW_TRACKING_URI={local_servers.urls['mlflow']}" in out.stdout.splitlines()


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


def test_down_stops_every_process_and_removes_the_data(tmp_path):
    ports = {name: free_port() for name in DEFAULT_PORTS}
    servers = up(tmp_path / "s", ports)
    pids = dict(servers.pids)
    assert all(_listening(p) for p in ports.values())
    stopped = down(tmp_path / "s")
    assert stopped == ["worker", "mlflow", "prefect", "s3", "postgres"]
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # no process of any group is left
    assert not any(_listening(p) for p in ports.values())
    assert not Path(servers.pgdata).exists()
    assert down(tmp_path / "s") == []  # idempotent
