"""Process plumbing for the local servers: run as the postgres user, wait for health, recognise our own
processes, stop a process group.

A PID in ``servers.json`` is only a number: by the time ``down`` reads it, the process may have died and
the number been given to someone else's. So every process is recorded with its command line and start
time (``fingerprint``), and a group is signalled only while its leader still matches (``group_is_ours``)."""

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


def fingerprint(pid: int) -> dict:
    """What identifies a process beyond its PID: its command line and start time."""
    import psutil

    p = psutil.Process(pid)
    return {"cmdline": p.cmdline(), "started": p.create_time()}


def is_ours(pid: int, recorded: dict | None) -> bool:
    """``pid`` is alive and is the process we started (same command line, same start time)."""
    import psutil

    if not recorded:
        return False
    try:
        p = psutil.Process(pid)
        return p.cmdline() == recorded["cmdline"] and abs(p.create_time() - recorded["started"]) < 0.5
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
        return False


def group_is_ours(pid: int, recorded: dict | None) -> bool:
    """May the process group ``pid`` be signalled? Its leader is ours; or the leader is gone and processes
    it left are still in its group (a PID is never reused while a group of that number exists)."""
    import psutil

    if is_ours(pid, recorded):
        return True
    try:
        psutil.Process(pid)
        leader_exists = True
    except psutil.NoSuchProcess:
        leader_exists = False
    except psutil.AccessDenied:
        return False
    if leader_exists and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        return False  # the number belongs to another process now: our group is gone
    for p in psutil.process_iter():
        try:
            if p.pid != pid and os.getpgid(p.pid) == pid:
                return True
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return False


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
