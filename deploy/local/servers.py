"""The local-servers topology on one machine (``staged servers``: flows/cli/servers.py).

    PostgreSQL   (the machine's binaries, run as the unprivileged ``postgres`` user when we are root)
    S3 endpoint  (moto's HTTP server; a bucket for MLflow's artifacts)
    Prefect      (``prefect server start`` on Postgres) + a process worker on the ``staged-process`` pool
    MLflow       (``mlflow server`` on Postgres, artifacts proxied to ``s3://<bucket>/mlartifacts``)

Everything listens on 127.0.0.1, logs to ``<dir>/logs/<name>.log`` and is recorded (PID, URL) in
``<dir>/servers.json`` so that ``down`` stops exactly what ``up`` started. ``up`` waits for each
health check and, if one fails, stops what it had started and exits 1 with the log's last line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deploy.local.processes import (
    ServerError,
    as_postgres,
    pid_alive,
    postgres_ids,
    run_logged,
    stop_group,
    venv_bin,
    wait_healthy,
)

POOL = "staged-process"
BUCKET = "staged"
# moto accepts any credentials; these only have to be the same for MLflow and our checks
S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "staged-local",
    "AWS_SECRET_ACCESS_KEY": "staged-local-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
ROOT = Path(__file__).resolve().parents[2]  # the checkout: deploy/work-pools/ lives there


@dataclass
class Servers:
    dir: str
    ports: dict[str, int]
    pgdata: str
    pids: dict[str, int] = field(default_factory=dict)  # process-group leaders, in start order

    @property
    def urls(self) -> dict[str, str]:
        p = self.ports
        return {
            "prefect": f"http://127.0.0.1:{p['prefect']}",
            "mlflow": f"http://127.0.0.1:{p['mlflow']}",
            "s3": f"http://127.0.0.1:{p['s3']}",
            "postgres": f"postgresql://postgres@127.0.0.1:{p['postgres']}",
        }

    def client_env(self) -> dict[str, str]:
        """What a shell, a test or the worker needs to use these servers."""
        return {
            "PREFECT_API_URL": f"{self.urls['prefect']}/api",
            "MLFLOW_TRACKING_URI": self.urls["mlflow"],
            "MLFLOW_S3_ENDPOINT_URL": self.urls["s3"],
            "AWS_ENDPOINT_URL_S3": self.urls["s3"],
            **S3_KEYS,
        }

    def save(self) -> None:
        (Path(self.dir) / "servers.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, dir: str | Path) -> Servers | None:
        path = Path(dir) / "servers.json"
        return cls(**json.loads(path.read_text())) if path.is_file() else None


def _pgdata(dir: Path) -> Path:
    """``<dir>/postgres`` when the postgres user can write there, else a private directory under /tmp."""
    wanted = dir / "postgres"
    if os.geteuid() != 0:
        return wanted
    probe = subprocess.run(["test", "-w", str(dir)], **as_postgres())
    if probe.returncode == 0:
        return wanted
    return Path(tempfile.mkdtemp(prefix="staged-pgdata-"))  # e.g. under pytest's 0700 tmp dirs


class _Starter:
    def __init__(self, servers: Servers):
        self.servers = servers
        self.logs = Path(servers.dir) / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def spawn(self, name: str, argv: list[str], env: dict[str, str], health: str | None) -> None:
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
                start_new_session=True,
                cwd=self.servers.dir,
            )
        self.servers.pids[name] = proc.pid
        self.servers.save()
        if health:
            wait_healthy(name, health, proc, log)

    def postgres(self) -> None:
        data, port = Path(self.servers.pgdata), self.servers.ports["postgres"]
        log = self.logs / "postgres.log"
        if not (data / "PG_VERSION").is_file():
            data.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                os.chown(data, *postgres_ids())
            run_logged(["initdb", "-D", str(data), "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8"], "initdb", log)
        options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
        # no -l: the server's output goes to our log through the inherited descriptor (root owns the file)
        run_logged(["pg_ctl", "-D", str(data), "-o", options, "-w", "start"], "postgres", log)
        import psycopg

        with psycopg.connect(f"{self.servers.urls['postgres']}/postgres", autocommit=True) as conn:
            for db in ("prefect", "mlflow"):
                conn.execute(f"CREATE DATABASE {db}")

    def s3(self) -> None:
        port = self.servers.ports["s3"]
        self.spawn(
            "s3", [venv_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)], {}, f"{self.servers.urls['s3']}/"
        )
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=self.servers.urls["s3"],
            region_name=S3_KEYS["AWS_DEFAULT_REGION"],
            aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        )
        s3.create_bucket(Bucket=BUCKET)

    def prefect(self) -> None:
        port, pg = self.servers.ports["prefect"], self.servers.ports["postgres"]
        env = {
            "PREFECT_HOME": str(Path(self.servers.dir) / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{pg}/prefect",
            "PREFECT_UI_API_URL": f"{self.servers.urls['prefect']}/api",  # the UI's own default is port 4200
        }
        argv = [venv_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        self.spawn("prefect", argv, env, f"{self.servers.urls['prefect']}/api/health")

    def mlflow(self) -> None:
        s = self.servers
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_S3_ENDPOINT_URL": s.urls["s3"], **S3_KEYS}
        argv = [
            venv_bin("mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(s.ports["mlflow"]),
            "--workers",
            "1",
            "--backend-store-uri",
            f"{s.urls['postgres']}/mlflow",
            "--artifacts-destination",
            f"s3://{BUCKET}/mlartifacts",
        ]
        self.spawn("mlflow", argv, env, f"{s.urls['mlflow']}/health")

    def worker(self) -> None:
        s = self.servers
        env = {
            **s.client_env(),
            "PREFECT_HOME": str(Path(s.dir) / "prefect-home"),
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
            "PREFECT_WORKER_WEBSERVER_PORT": str(s.ports["worker"]),
        }
        template = ROOT / "deploy" / "work-pools" / "process.json"
        argv = [
            venv_bin("prefect"),
            "worker",
            "start",
            "--pool",
            POOL,
            "--type",
            "process",
            "--with-healthcheck",
            "--name",
            "staged-local",
        ]
        if template.is_file():
            argv += ["--base-job-template", str(template)]
        self.spawn("worker", argv, env, f"http://127.0.0.1:{s.ports['worker']}/health")


DEFAULT_PORTS = {"postgres": 54329, "s3": 9000, "prefect": 4200, "mlflow": 5000, "worker": 8089}


def up(dir: str | Path, ports: dict[str, int] | None = None) -> Servers:
    """Start every server (a no-op for an already running set); on failure stop what was started."""
    dir = Path(dir).resolve()
    dir.mkdir(parents=True, exist_ok=True)
    if (earlier := Servers.load(dir)) is not None:
        if _alive(earlier):
            return earlier
        down(dir)  # what is left of a set that died: stop it and start clean
    ports = {**DEFAULT_PORTS, **(ports or {})}
    _check_ports_free(ports)
    servers = Servers(dir=str(dir), ports=ports, pgdata=str(_pgdata(dir)))
    servers.save()
    start = _Starter(servers)
    try:
        for step in (start.postgres, start.s3, start.prefect, start.mlflow, start.worker):
            step()
    except BaseException:
        down(dir)
        raise
    return servers


def _check_ports_free(ports: dict[str, int]) -> None:
    """A busy port would make a health check answer for someone else's server."""
    import socket

    for name, port in ports.items():
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                raise ServerError(f"port {port} ({name}) is already in use on 127.0.0.1: pass --{name}-port")


def _alive(servers: Servers) -> bool:
    return bool(servers.pids) and all(pid_alive(pid) for pid in servers.pids.values())


def down(dir: str | Path, grace: float = 15) -> list[str]:
    """Stop what ``up`` recorded, newest first: SIGTERM to each process group, SIGKILL after ``grace``.

    The Postgres data goes too: moto keeps the S3 objects in memory only, and a registry whose
    artifacts are gone would be worse than none. The local servers are a sandbox for one session."""
    servers = Servers.load(dir)
    if servers is None:
        return []
    stopped = []
    for name, pid in reversed(servers.pids.items()):
        if pid_alive(pid):
            stop_group(pid, grace)
            stopped.append(name)
    if (Path(servers.pgdata) / "postmaster.pid").is_file():
        log = Path(servers.dir) / "logs" / "postgres.log"
        run_logged(["pg_ctl", "-D", servers.pgdata, "-m", "fast", "-w", "stop"], "pg_ctl stop", log)
        stopped.append("postgres")
    servers.pids = {}
    servers.save()
    shutil.rmtree(servers.pgdata, ignore_errors=True)
    return stopped
