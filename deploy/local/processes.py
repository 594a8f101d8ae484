"""Process plumbing for the local servers: run as the postgres user, wait for health, stop a process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class ServerError(RuntimeError):
    """A server that did not come up; the message is one line."""


def as_postgres() -> dict:
    """subprocess kwargs: postgres refuses to run as root, so root runs it as the ``postgres`` user."""
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


def wait_healthy(name: str, url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    """Until ``url`` answers 200; a ServerError naming the log's last line if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"{name} exited with code {proc.returncode}: {last_line(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise ServerError(f"{name} not healthy at {url} after {timeout:.0f} s: {last_line(log)}")


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.is_file() else []
    return lines[-1].strip()[:300] if lines else f"no output (see {log})"


def postgres_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def venv_bin(name: str) -> str:
    """A console script of this interpreter's environment (the venv the project is installed in)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def run_logged(argv: list[str], name: str, log: Path) -> None:
    with open(log, "ab") as out:
        code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, **as_postgres()).returncode
    if code != 0:
        raise ServerError(f"{name} failed with code {code}: {last_line(log)}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pid: int, grace: float) -> None:
    """Until no process of the group is left (a zombie leader counts until it is reaped)."""
    sig, deadline = signal.SIGTERM, time.monotonic() + grace
    while True:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        try:
            os.waitpid(pid, os.WNOHANG)  # reap the leader when it is our own child (tests)
        except ChildProcessError:
            pass
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        time.sleep(0.2)
