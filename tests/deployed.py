"""Deploying from deploy/prefect.yaml onto `staged servers` and running the smoke config through the
worker, as a person would with the CLI; shared by tests/tasks/test_topology.py and tests/deploy/test_browser.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

from repo import REPO_ROOT

from deploy.local.servers import BUCKET

ROOT = REPO_ROOT
# the smoke config, shortened; checkpoints on the S3 endpoint rather than in the run's clone
OVERRIDES = ["stages.0.steps=6", "stages.1.steps=4", "stages.2.steps=2", f"storage.uri=s3://{BUCKET}/smoke"]


def _prefect(servers, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        **servers.client_env(),
        "PREFECT_HOME": str(Path(servers.dir) / "prefect-home"),
        "STAGED_GIT_REPOSITORY": str(ROOT),
        "STAGED_GIT_BRANCH": _branch(),
    }
    out = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _branch() -> str:
    """The worker clones the committed state of this checkout's branch (CI: a clean clone of main)."""
    return subprocess.run(
        ["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def deploy_and_run(local_servers):
    """Deploy everything in deploy/prefect.yaml, run `on-demand` through the worker, wait for the end;
    returns (servers, the flow run as the API reads it back)."""
    _prefect(local_servers, "deploy", "--prefect-file", "deploy/prefect.yaml", "--all", "--no-prompt")
    out = _prefect(
        local_servers,
        "deployment",
        "run",
        "staged-training/on-demand",
        "--param",
        f"overrides={json.dumps(OVERRIDES)}",
        "--watch",
        "--watch-interval",
        "2",
        "--watch-timeout",
        "400",
        timeout=420,
    )
    return local_servers, _read_flow_run(local_servers, out.stdout)


def _read_flow_run(servers, cli_output: str):
    import re

    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", cli_output).group(1)
    return api(servers, lambda client: client.read_flow_run(run_id))


def api(servers, call):
    """``call(client)`` with a synchronous Prefect client of the servers' API."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    env = servers.client_env()  # the API answers only with the auth string
    settings = {PREFECT_API_URL: env["PREFECT_API_URL"], PREFECT_API_AUTH_STRING: env["PREFECT_API_AUTH_STRING"]}
    with temporary_settings(settings):
        with get_client(sync_client=True) as client:
            return call(client)
