"""deploy/: the files are checked as far as this machine allows (no Docker daemon, no Kubernetes):
their structure, the job templates rendered by Prefect's own templating, and a real Prefect API
(the session's harness) accepting the work pools, the deployments and the automation through the
documented CLI commands."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml
from repo import REPO_ROOT

ROOT = REPO_ROOT
DEPLOY = ROOT / "deploy"
PREFECT = str(Path(sys.executable).parent / "prefect")
POOLS = {"process": "staged-process", "docker": "staged-docker-gpu", "kubernetes": "staged-k8s-gpu"}
NO_BLOCK = "00000000-0000-0000-0000-000000000000"


def _load(name: str):
    return yaml.safe_load((DEPLOY / name).read_text())


def _deployments() -> dict:
    return {d["name"]: d for d in _load("prefect.yaml")["deployments"]}


def _render(template: dict, values: dict | None = None) -> dict:
    """What a worker does with a pool's template: variable defaults, then the job's values, applied."""
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration

    variables = BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"])
    return apply_values(template["job_configuration"], {**variables, **(values or {})})


# --- the files themselves -------------------------------------------------------------------------


def _flow_in(path: Path, func: str) -> tuple[str, list[str]]:
    """The flow name and parameter names of ``@flow(name=...) def func(...)`` in a file (not imported)."""
    (fn,) = [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef) and n.name == func]
    (name,) = [
        k.value.value for d in fn.decorator_list if isinstance(d, ast.Call) for k in d.keywords if k.arg == "name"
    ]
    return name, [a.arg for a in fn.args.args]


def test_prefect_yaml_deploys_the_flow_with_existing_configs():
    from prefect.client.schemas.schedules import CronSchedule

    from tasks.config import load_config

    deployments = _deployments()
    assert set(deployments) == {"nightly", "on-demand"}
    for d in deployments.values():
        path, func = d["entrypoint"].split(":")
        flow_name, parameters = _flow_in(ROOT / path, func)
        assert flow_name == "staged-training" and set(d["parameters"]) == set(parameters)
        load_config(ROOT / d["parameters"]["config"], d["parameters"]["overrides"])
        assert d["work_pool"]["name"] == POOLS["process"]
    assert deployments["nightly"]["parameters"]["config"] == "configs/demo.yaml"
    assert deployments["on-demand"]["parameters"]["config"] == "configs/smoke.yaml"
    assert not deployments["on-demand"]["schedules"]
    (nightly,) = deployments["nightly"]["schedules"]
    CronSchedule(cron=nightly["cron"], timezone=nightly["timezone"])  # what the server validates
    (clone,) = _load("prefect.yaml")["pull"]
    assert clone["prefect.deployments.steps.git_clone"]["repository"] == "{{ $STAGED_GIT_REPOSITORY }}"


def test_job_templates_render_gpu_jobs():
    """Prefect's templating turns the pools' defaults into a GPU pod and a GPU container."""
    import docker.types

    k8s = _render(json.loads((DEPLOY / "work-pools/kubernetes.json").read_text()), {"env": {"A": "1"}})
    pod = k8s["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["memory"] == "32Gi"
    assert container["envFrom"] == [{"secretRef": {"name": "staged-env"}}]
    assert container["env"] == {"A": "1"}  # the kubernetes worker turns it into a list and keeps envFrom
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert {v["name"] for v in pod["volumes"]} == {m["name"] for m in container["volumeMounts"]}

    dock = _render(json.loads((DEPLOY / "work-pools/docker.json").read_text()))
    host = docker.types.HostConfig(version="1.44", **dock["container_create_kwargs"])  # docker-py's own checks
    assert host["DeviceRequests"][0]["Driver"] == "nvidia" and host["DeviceRequests"][0]["Count"] == -1
    assert host["DeviceRequests"][0]["Capabilities"] == [["gpu"]]


def test_compose_stack_structure_and_secrets():
    compose = _load("docker-compose.yml")
    services = compose["services"]
    assert {"postgres", "prefect-server", "mlflow", "minio", "minio-setup", "worker"} <= set(services)
    for name in ("postgres", "minio", "prefect-server", "mlflow"):
        assert services[name]["healthcheck"]["test"], name
    assert services["mlflow"]["depends_on"]["minio-setup"]["condition"] == "service_completed_successfully"
    assert services["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    (gpu,) = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert "prefect worker start" in " ".join(services["worker"]["command"])
    server_env = services["prefect-server"]["environment"]
    assert server_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    mlflow_env = services["mlflow"]["environment"]  # the store URIs in the environment, not on the command line
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert mlflow_env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert mlflow_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"

    for service in services.values():  # secrets only by interpolation, never literal
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*)?\}", str(value)), (key, value)
    text = json.dumps(compose)  # the values compose interpolates (comments left out)
    assert not re.search(r"://[^$/\s:]+:[^$@\s]+@", text)  # user:password@ only as ${VAR}s
    example = {line.split("=")[0] for line in (DEPLOY / ".env.example").read_text().splitlines() if "=" in line}
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    assert used and used <= example, used - example
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/.env"], cwd=ROOT)
    assert ignored.returncode == 0, "deploy/.env must be gitignored"


def test_dockerfile_is_cuda_torch_and_not_root():
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M).group(1)
    assert re.fullmatch(r"pytorch/pytorch:2\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", base)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^RUN .*pip install \.", text, re.M) and "git" in text  # pull steps need git
    assert json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))[:3] == ["prefect", "worker", "start"]


# --- a real Prefect API ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli(prefect_harness):
    """Runs `prefect ...` as the docs say, from the repository root, against the harness's API."""
    from prefect.settings import PREFECT_API_URL

    base = {k: v for k, v in os.environ.items() if not k.startswith("STAGED_GIT_")}
    base |= {"PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}

    def run(*args: str, env: dict | None = None, cwd: Path = ROOT, exe: str = PREFECT) -> str:
        done = subprocess.run([exe, *args], cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True)
        assert done.returncode == 0, f"{args}: {done.stdout[-1500:]}{done.stderr[-1500:]}"
        return done.stdout

    return run


@pytest.fixture(scope="module")
def pools(cli) -> dict:
    """The three work pools, created with the documented command from deploy/work-pools/."""
    for kind, name in POOLS.items():
        template = DEPLOY / f"work-pools/{kind}.json"
        cli("work-pool", "create", name, "--type", kind, "--base-job-template", str(template), "--overwrite")
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {kind: client.read_work_pool(name) for kind, name in POOLS.items()}


def test_work_pools_from_the_template_files(pools):
    for kind, pool in pools.items():
        assert pool.type == kind
        assert pool.base_job_template == json.loads((DEPLOY / f"work-pools/{kind}.json").read_text())


@pytest.fixture
def repo(tmp_path):
    """A git repository with the project's code on branch main, as the workers would clone it."""
    src = tmp_path / "src" / "staged-training"
    for part in ("models", "tasks", "flows", "configs"):
        shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "code"]):
        subprocess.run([*git, *args], cwd=src, check=True)
    return src


def test_deploy_then_a_flow_run_imports_from_the_clone(cli, pools, repo, tmp_path):
    from prefect.client.orchestration import get_client

    # One deployment onto a GPU pool: --pool works per deployment (with --all, Prefect ignores it).
    # Without STAGED_GIT_BRANCH when deploying, the branch stays a placeholder for the flow run's env.
    repo_only = {"STAGED_GIT_REPOSITORY": str(repo)}
    cli(
        "deploy",
        "--prefect-file",
        "deploy/prefect.yaml",
        "-n",
        "on-demand",
        "--pool",
        POOLS["kubernetes"],
        env=repo_only,
    )
    with get_client(sync_client=True) as client:
        moved = client.read_deployment_by_name("staged-training/on-demand")
    assert moved.work_pool_name == POOLS["kubernetes"]
    assert moved.pull_steps[0]["prefect.deployments.steps.git_clone"]["branch"] == "{{ $STAGED_GIT_BRANCH }}"

    git_env = {"STAGED_GIT_REPOSITORY": str(repo), "STAGED_GIT_BRANCH": "main"}
    cli("deploy", "--prefect-file", "deploy/prefect.yaml", "--all", env=git_env)
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("staged-training/nightly")
        demand = client.read_deployment_by_name("staged-training/on-demand")
        (sched,) = nightly.schedules
        assert (sched.schedule.cron, sched.schedule.timezone, sched.active) == ("0 2 * * *", "UTC", True)
        assert demand.schedules == []
        assert nightly.work_pool_name == demand.work_pool_name == POOLS["process"]
        assert nightly.parameters == {
            "config": "configs/demo.yaml",
            "workdir": ".staged",
            "from_version": None,
            "overrides": [],
        }
        assert demand.parameters["config"] == "configs/smoke.yaml"
        assert nightly.entrypoint == "flows/staged.py:staged_training"
        step = nightly.pull_steps[0]["prefect.deployments.steps.git_clone"]
        assert (step["repository"], step["branch"]) == (str(repo), "main")  # resolved when deploying

    # Trigger on-demand the documented way (no worker in this session polls the pool).
    ran = cli("deployment", "run", "staged-training/on-demand", "--param", 'overrides=["stages.0.steps=1"]')
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(re.search(r"UUID:\s+(\S+)", ran).group(1))
    assert run.deployment_id == demand.id and run.work_pool_name == POOLS["process"]
    assert run.parameters == {**demand.parameters, "overrides": ["stages.0.steps=1"]}

    # What the engine does in a worker's flow-run process: pull steps, chdir, import the entrypoint.
    probe = (
        "import asyncio, json, sys\n"
        "from prefect import get_client\n"
        "from prefect.flows import load_flow_from_flow_run\n"
        "async def main():\n"
        "    async with get_client() as c:\n"
        "        run = await c.read_flow_run(sys.argv[1])\n"
        "    flow = await load_flow_from_flow_run(run)\n"
        "    mods = {m: sys.modules[m].__file__ for m in ('tasks', 'tasks.stage', 'models', 'models.families.gpt')}\n"
        "    print(json.dumps({'flow': flow.name, 'flows': flow.fn.__code__.co_filename, **mods}))\n"
        "asyncio.run(main())\n"
    )
    runs_in = tmp_path / "flow-run"
    runs_in.mkdir()
    try:  # PYTHONPATH empty: only the clone may provide the project (the venv has it editable elsewhere)
        out = cli("-c", probe, str(run.id), env={"PYTHONPATH": ""}, cwd=runs_in, exe=sys.executable)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_flow_run(run.id)  # no worker in this session may pick it up
    modules = json.loads(out.splitlines()[-1])
    assert modules.pop("flow") == "staged-training"
    clone = (runs_in / "staged-training-main").resolve()
    for module, file in modules.items():
        assert Path(file).resolve().is_relative_to(clone), (module, file)


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_failure_automation_notifies(cli, tmp_path):
    """The automation file, created the documented way, fires on a failed staged-training run."""
    from prefect import flow
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hook"
    body = {"subject": "{{subject}}", "body": "{{body}}"}
    CustomWebhookNotificationBlock(name="t", url=url, json_data=body).save("staged-alerts-test", overwrite=True)
    block = json.loads(cli("block", "inspect", "custom-webhook/staged-alerts-test", "-o", "json"))
    text = (DEPLOY / "automations/notify-on-failure.yaml").read_text()
    assert yaml.safe_load(text)["actions"][0]["block_document_id"] == NO_BLOCK
    concrete = tmp_path / "notify.yaml"
    concrete.write_text(text.replace(NO_BLOCK, block["id"]))
    automation_id = re.search(r"with id\s+(\S+)", cli("automation", "create", "--from-file", str(concrete))).group(1)
    try:
        with get_client(sync_client=True) as client:
            (automation,) = [a for a in client.read_automations() if str(a.id) == automation_id]
        assert automation.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
        assert str(automation.actions[0].block_document_id) == block["id"]

        @flow(name="staged-training")
        def failing():
            raise RuntimeError("boom")

        state = failing(return_state=True)
        assert state.is_failed()
        deadline = time.time() + 30
        while not _Hook.received and time.time() < deadline:
            time.sleep(0.2)
        (note,) = _Hook.received
        assert note["subject"].startswith("staged-training: flow run ") and note["subject"].endswith(" is Failed")
        assert "boom" in note["body"]
    finally:
        with get_client(sync_client=True) as client:
            client.delete_automation(automation_id)
        server.shutdown()
