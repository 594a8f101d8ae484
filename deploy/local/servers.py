"""The local-servers topology on one machine (``staged servers``: flows/cli/servers.py).

    PostgreSQL   (the machine's binaries; scram-sha-256, one role + database each for Prefect and MLflow)
    S3 endpoint  (moto's HTTP server: checkpoints with ``storage.uri=s3://staged/...``)
    Prefect      (``prefect server start`` on Postgres, API behind an auth string) + a process worker
    MLflow       (``mlflow server --app-name basic-auth`` on Postgres; artifacts proxied to ``<dir>/artifacts``)

Everything listens on 127.0.0.1, logs to ``<dir>/logs/<name>.log`` and is recorded (PID, command line,
start time) in ``<dir>/servers.json``; the generated credentials are in ``<dir>/secrets.json`` (0600).
``up`` waits for each health check and, if one fails, stops what it had started and exits 1 with the
log's last line. The data (Postgres, MLflow's artifacts and users) is kept by ``down`` and by any crash;
only ``down(purge=True)`` deletes it. ``up`` after a crash stops what is left and starts again on the
same data. Only processes that are still ours (tasks in deploy/local/processes.py) are ever signalled.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deploy.local import postgres
from deploy.local.processes import (
    ServerError,
    as_postgres,
    fingerprint,
    group_is_ours,
    is_ours,
    stop_group,
    venv_bin,
    wait_healthy,
)
from deploy.local.secrets import base_env, load_or_create

POOL = "staged-process"
BUCKET = "staged"
# moto accepts any credentials (it has no authentication: see docs/security.md); these only have to be the
# same for the clients and our checks
S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "staged-local",
    "AWS_SECRET_ACCESS_KEY": "staged-local-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
PREFECT_USER, MLFLOW_ADMIN = "staged", "admin"
ROOT = Path(__file__).resolve().parents[2]  # the checkout: deploy/work-pools/ lives there
PURGED = ("artifacts", "mlflow-auth.db", "mlflow-auth.ini", "prefect-home", "secrets.json", "servers.json")


@dataclass
class Servers:
    dir: str
    ports: dict[str, int]
    pgdata: str
    pids: dict[str, int] = field(default_factory=dict)  # process-group leaders, in start order
    processes: dict[str, dict] = field(default_factory=dict)  # name -> fingerprint (command line, start time)

    @property
    def urls(self) -> dict[str, str]:
        p = self.ports
        return {
            "prefect": f"http://127.0.0.1:{p['prefect']}",
            "mlflow": f"http://127.0.0.1:{p['mlflow']}",
            "s3": f"http://127.0.0.1:{p['s3']}",
            "postgres": f"postgresql://127.0.0.1:{p['postgres']}",
        }

    def secrets(self) -> dict[str, str]:
        return load_or_create(Path(self.dir))

    def postgres_url(self, role: str, driver: str = "postgresql") -> str:
        """A connection URL for ``role`` (postgres, prefect or mlflow) to its database, password included."""
        password = self.secrets()["postgres" if role == "postgres" else f"{role}_db"]
        db = "postgres" if role == "postgres" else role
        return f"{driver}://{role}:{password}@127.0.0.1:{self.ports['postgres']}/{db}"

    def client_env(self) -> dict[str, str]:
        """What a shell, a test or the worker needs to use these servers (credentials included)."""
        s = self.secrets()
        return {
            "PREFECT_API_URL": f"{self.urls['prefect']}/api",
            "PREFECT_API_AUTH_STRING": f"{PREFECT_USER}:{s['prefect_auth']}",
            "MLFLOW_TRACKING_URI": self.urls["mlflow"],
            "MLFLOW_TRACKING_USERNAME": MLFLOW_ADMIN,
            "MLFLOW_TRACKING_PASSWORD": s["mlflow_admin"],
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

    def running(self, name: str) -> bool:
        return is_ours(self.pids[name], self.processes.get(name))


def _pgdata(dir: Path) -> Path:
    """``<dir>/postgres`` when the postgres user can reach it, else a private directory under /tmp."""
    wanted = dir / "postgres"
    if os.geteuid() != 0:
        return wanted
    probe = subprocess.run(["test", "-x", str(dir)], **as_postgres())
    if probe.returncode == 0:
        return wanted
    return Path(tempfile.mkdtemp(prefix="staged-pgdata-"))  # e.g. under pytest's 0700 tmp dirs


class _Starter:
    def __init__(self, servers: Servers):
        self.servers, self.dir = servers, Path(servers.dir)
        self.secrets = servers.secrets()
        self.logs = self.dir / "logs"
        self.logs.mkdir(mode=0o700, parents=True, exist_ok=True)

    def spawn(self, name: str, argv: list[str], env: dict[str, str], health: str) -> None:
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**base_env(), **env},  # never the whole environment of the shell
                start_new_session=True,
                cwd=self.servers.dir,
                umask=0o077,  # what the servers write (MLflow's user database, artifacts) is this user's only
            )
        self.servers.pids[name] = proc.pid
        self.servers.save()
        wait_healthy(name, health, proc, log)
        self.servers.processes[name] = fingerprint(proc.pid)  # now it runs its own command line, not ours
        self.servers.save()

    def postgres(self) -> None:
        data, port = Path(self.servers.pgdata), self.servers.ports["postgres"]
        log = self.logs / "postgres.log"
        postgres.init(data, self.secrets["postgres"], log)
        postgres.start(data, port, log)
        roles = {"prefect": self.secrets["prefect_db"], "mlflow": self.secrets["mlflow_db"]}
        postgres.provision(port, self.secrets["postgres"], roles)

    def s3(self) -> None:
        s = self.servers
        self.spawn("s3", [venv_bin("moto_server"), "-H", "127.0.0.1", "-p", str(s.ports["s3"])], {}, f"{s.urls['s3']}/")
        import boto3

        keys = {
            "aws_access_key_id": S3_KEYS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        }
        s3 = boto3.client("s3", endpoint_url=s.urls["s3"], region_name=S3_KEYS["AWS_DEFAULT_REGION"], **keys)
        s3.create_bucket(Bucket=BUCKET)

    def prefect(self) -> None:
        s = self.servers
        env = {
            "PREFECT_HOME": str(self.dir / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_DATABASE_CONNECTION_URL": s.postgres_url("prefect", "postgresql+asyncpg"),
            "PREFECT_SERVER_API_AUTH_STRING": f"{PREFECT_USER}:{self.secrets['prefect_auth']}",
            "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": s.urls["prefect"],  # only its own UI, not `*`
            "PREFECT_UI_API_URL": f"{s.urls['prefect']}/api",  # the UI's own default is port 4200
        }
        argv = [venv_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(s.ports["prefect"])]
        self.spawn("prefect", argv, env, f"{s.urls['prefect']}/api/health")

    def mlflow(self) -> None:
        s = self.servers
        config = self.dir / "mlflow-auth.ini"
        config.write_text(
            "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
            f"database_uri = sqlite:///{self.dir / 'mlflow-auth.db'}\nadmin_username = {MLFLOW_ADMIN}\n"
            # without it every request runs a PBKDF2 check: measured 0.7 s per request on 2 busy cores
            "auth_cache_ttl_seconds = 300\n"
        )
        (self.dir / "artifacts").mkdir(mode=0o700, exist_ok=True)
        env = {
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_BACKEND_STORE_URI": s.postgres_url("mlflow"),  # in the environment, not on the command line
            "MLFLOW_ARTIFACTS_DESTINATION": str(self.dir / "artifacts"),
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.secrets["mlflow_admin"],  # read when the user database is created
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secrets["mlflow_flask"],
        }
        argv = [venv_bin("mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1"]
        argv += ["--port", str(s.ports["mlflow"]), "--workers", "1"]
        self.spawn("mlflow", argv, env, f"{s.urls['mlflow']}/health")

    def worker(self) -> None:
        s = self.servers
        env = {
            **s.client_env(),
            "PREFECT_HOME": str(self.dir / "prefect-home"),
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
            "PREFECT_WORKER_WEBSERVER_PORT": str(s.ports["worker"]),
        }
        template = ROOT / "deploy" / "work-pools" / "process.json"
        argv = [venv_bin("prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--with-healthcheck"]
        argv += ["--name", "staged-local"]
        if template.is_file():
            argv += ["--base-job-template", str(template)]
        self.spawn("worker", argv, env, f"http://127.0.0.1:{s.ports['worker']}/health")


DEFAULT_PORTS = {"postgres": 54329, "s3": 9000, "prefect": 4200, "mlflow": 5000, "worker": 8089}


def up(dir: str | Path, ports: dict[str, int] | None = None) -> Servers:
    """Start every server on the data of an earlier ``up`` if there is one (a no-op for a running set); on
    failure stop what was started. Nothing is ever deleted here."""
    dir = Path(dir).resolve()
    dir.mkdir(parents=True, exist_ok=True)
    dir.chmod(0o711 if os.geteuid() == 0 else 0o700)  # secrets, logs, data: this user's (root: postgres may pass)
    earlier = Servers.load(dir)
    if earlier is not None:
        if earlier.pids and all(earlier.running(name) for name in earlier.pids):
            return earlier
        _stop(earlier)  # what is left of a set that crashed; its data stays
    ports = {**DEFAULT_PORTS, **(ports or {})}
    _check_ports_free(ports)
    pgdata = earlier.pgdata if earlier is not None and Path(earlier.pgdata).is_dir() else str(_pgdata(dir))
    servers = Servers(dir=str(dir), ports=ports, pgdata=pgdata)
    servers.save()
    start = _Starter(servers)
    try:
        for step in (start.postgres, start.s3, start.prefect, start.mlflow, start.worker):
            step()
    except BaseException:
        _stop(servers)
        raise
    return servers


def _check_ports_free(ports: dict[str, int]) -> None:
    """A busy port would make a health check answer for someone else's server."""
    import socket

    for name, port in ports.items():
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                raise ServerError(f"port {port} ({name}) is already in use on 127.0.0.1: pass --{name}-port")


def _stop(servers: Servers, grace: float = 15) -> list[str]:
    """Stop the recorded processes that are still ours, newest first, then Postgres; the data stays."""
    stopped = []
    for name, pid in reversed(servers.pids.items()):
        if group_is_ours(pid, servers.processes.get(name)):
            stop_group(pid, grace)
            stopped.append(name)
    if postgres.running(Path(servers.pgdata)):
        postgres.stop(Path(servers.pgdata), Path(servers.dir) / "logs" / "postgres.log")
        stopped.append("postgres")
    servers.pids, servers.processes = {}, {}
    servers.save()
    return stopped


def down(dir: str | Path, grace: float = 15, purge: bool = False) -> list[str]:
    """Stop what ``up`` recorded (SIGTERM to each process group still ours, SIGKILL after ``grace``) and
    Postgres. The data stays for the next ``up``; with ``purge`` it goes: the Postgres data directory, MLflow's
    artifacts and user database, Prefect's home, the credentials and the record."""
    servers = Servers.load(dir)
    if servers is None:
        return []
    stopped = _stop(servers, grace)
    if purge:
        shutil.rmtree(servers.pgdata, ignore_errors=True)
        for name in PURGED:
            path = Path(servers.dir) / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return stopped
