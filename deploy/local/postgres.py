"""PostgreSQL for the local servers, from the machine's binaries, with passwords.

    init(data, password, log)         initdb -A scram-sha-256: every connection, local socket included, needs a
                                      password (``-A trust`` would make every local user a superuser)
    start(data, port, log) / stop(data, log)
    provision(port, password, roles)  one login role and one database per server, owned by it, closed to PUBLIC

Idempotent: an existing data directory is kept as it is, existing roles get their password from the
secrets file again, existing databases stay.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from deploy.local.processes import postgres_ids, run_logged


def init(data: Path, password: str, log: Path) -> None:
    if (data / "PG_VERSION").is_file():
        return
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    fd, pwfile = tempfile.mkstemp(prefix="staged-pw-")  # 0600, readable by the postgres user only
    try:
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        if os.geteuid() == 0:
            os.chown(data, *postgres_ids())
            os.chown(pwfile, *postgres_ids())
        argv = ["initdb", "-D", str(data), "-U", "postgres", "--pwfile", pwfile]
        run_logged([*argv, "-A", "scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"], "initdb", log)
    finally:
        os.unlink(pwfile)


def start(data: Path, port: int, log: Path) -> None:
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c password_encryption=scram-sha-256"
    # no -l: the server's output goes to our log through the inherited descriptor (root owns the file)
    run_logged(["pg_ctl", "-D", str(data), "-o", options, "-w", "start"], "postgres", log)


def running(data: Path) -> bool:
    """A server runs on ``data`` (a stale postmaster.pid left by a crash does not count)."""
    import subprocess

    from deploy.local.processes import as_postgres

    if not (data / "PG_VERSION").is_file():
        return False
    return subprocess.run(["pg_ctl", "-D", str(data), "status"], capture_output=True, **as_postgres()).returncode == 0


def stop(data: Path, log: Path) -> None:
    run_logged(["pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"], "pg_ctl stop", log)


def provision(port: int, password: str, roles: dict[str, str]) -> None:
    """For each ``role: password``: a login role (no superuser) and a database of the same name that it owns."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        host="127.0.0.1", port=port, user="postgres", password=password, dbname="postgres", autocommit=True
    ) as conn:
        for role, secret in roles.items():
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(secret)
                )
            )
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (role,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(role), sql.Identifier(role)))
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(role)))
