"""deploy/work-pools/kubernetes-multinode.json + deploy/kubernetes/multinode-service.yaml: a stage across pods.

No cluster here: the pool's template is rendered with Prefect's own templating, completed as the
kubernetes worker completes it (its env prepended, args kept as a list), and the Job and the Service
are validated against the Kubernetes OpenAPI schemas (kubernetes-validate, offline, strict: unknown
fields fail too).
"""

import copy
import json
import shlex
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from repo import REPO_ROOT

from tasks.parallel.follow import parse

DEPLOY = REPO_ROOT / "deploy"
K8S = "1.34"  # successPolicy (index 0 ends the Job) is GA since 1.33


def _render(values: dict | None = None) -> dict:
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration

    template = json.loads((DEPLOY / "work-pools/kubernetes-multinode.json").read_text())
    variables = BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"])
    config = apply_values(template["job_configuration"], {**variables, **(values or {})})
    job = config["job_manifest"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = [{"name": k, "value": v} for k, v in (config.get("env") or {}).items()]  # what the worker does
    container["env"] = [*env, *container["env"]]
    job["metadata"]["name"] = "staged-training-abcde"  # the API server would generate it from generateName
    return job


def _service() -> dict:
    return yaml.safe_load((DEPLOY / "kubernetes/multinode-service.yaml").read_text())


def test_the_job_and_the_service_validate_against_the_kubernetes_schemas():
    job = _render({"env": {"PREFECT_API_URL": "http://prefect:4200/api"}, "nnodes": 4, "gpus_per_node": 8})
    kubernetes_validate.validate(job, K8S, strict=True)
    kubernetes_validate.validate(_service(), K8S, strict=True)
    broken = copy.deepcopy(job)
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["limit"] = {}  # a typo: limits
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S, strict=True)
    broken = copy.deepcopy(job)
    broken["spec"]["template"]["spec"]["containers"][0]["env"][-1]["value"] = 29400  # env values are strings
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S, strict=True)


def test_pods_rendezvous_through_the_headless_service():
    job, service = _render({"nnodes": 3, "gpus_per_node": 4}), _service()
    spec, pod = job["spec"], job["spec"]["template"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 3
    assert spec["successPolicy"] == {"rules": [{"succeededIndexes": "0"}]}  # pod 0 (the flow run) decides
    assert spec["backoffLimit"] == 0
    assert service["spec"]["clusterIP"] == "None" and pod["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["metadata"]["namespace"] == job["metadata"]["namespace"] == "staged"
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 4
    env = {e["name"]: e for e in container["env"]}
    host, port = env["STAGED_RDZV_ENDPOINT"]["value"].rsplit(":", 1)
    assert host == f"$(JOB_NAME)-0.{service['metadata']['name']}"  # pod 0's DNS name in the service
    assert int(port) == service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"]
    assert env["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/job-name']"
    assert env["STAGED_NODE_ADDR"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"

    # pod 0 runs the flow run, the others follow; the follower's command line is one tasks.parallel.follow takes
    (script,) = container["args"]
    assert container["command"] == ["/bin/sh", "-c"] and "exec prefect flow-run execute" in script
    follow = shlex.split(script.split("else exec ", 1)[1].removesuffix("; fi"))
    assert follow[:3] == ["python", "-m", "tasks.parallel.follow"]
    values = {"$STAGED_RDZV_ENDPOINT": "job-0.staged-nodes:29400"}  # what the shell expands
    parallel = parse([values.get(a, a) for a in follow[3:]])
    assert (parallel.nnodes, parallel.nproc, parallel.rdzv_endpoint) == (3, 4, "job-0.staged-nodes:29400")


def test_dangerous_fields_are_fixed_not_variables():
    template = json.loads((DEPLOY / "work-pools/kubernetes-multinode.json").read_text())
    variables = set(template["variables"]["properties"])
    assert not variables & {"namespace", "service_account_name", "secret_name", "privileged", "host_network"}
    job = _render()
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["serviceAccountName"] == "staged-flow-runner" and pod["automountServiceAccountToken"] is False
    assert not pod["hostNetwork"] and not pod["hostPID"] and not pod["hostIPC"]
    assert container["envFrom"] == [{"secretRef": {"name": "staged-env"}}]
    security = container["securityContext"]
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["runAsNonRoot"] is True and security["capabilities"] == {"drop": ["ALL"]}
    assert template["job_configuration"]["namespace"] == "staged"


@pytest.mark.integration
def test_prefect_accepts_the_pool_with_the_documented_command(prefect_harness):
    import os
    import subprocess
    import sys

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    template = DEPLOY / "work-pools/kubernetes-multinode.json"
    prefect = str(Path(sys.executable).parent / "prefect")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    cmd = [prefect, "work-pool", "create", "staged-k8s-multinode", "--type", "kubernetes"]
    done = subprocess.run(cmd + ["--base-job-template", str(template), "--overwrite"], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr[-2000:]
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool("staged-k8s-multinode")
    assert pool.type == "kubernetes" and pool.base_job_template == json.loads(template.read_text())


def test_a_stage_sizes_its_own_job_one_pod_per_node_and_its_gpus_per_pod():
    """flows/pools.py: the stage's parallel section sizes the Job it is sent to (a job_variables value wins), and
    the rendered per-stage Job validates; a single-pod pool gets gpu_count the same way."""
    from flows.pools import sized
    from tasks.config import ParallelConfig, WorkerConfig

    parallel = ParallelConfig(strategy="fsdp", nproc=4, nnodes=3, rdzv_endpoint="job-0.staged-nodes:29400")
    for name, want in [
        ("kubernetes-multinode", {"nnodes": 3, "gpus_per_node": 4}),
        ("kubernetes", {"gpu_count": 4}),
        ("process", {}),
    ]:
        declared = json.loads((DEPLOY / f"work-pools/{name}.json").read_text())["variables"]["properties"]
        values = sized(WorkerConfig(work_pool=name), declared, parallel)
        assert values == {**want, "env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}}, name
    multinode = json.loads((DEPLOY / "work-pools/kubernetes-multinode.json").read_text())["variables"]["properties"]
    values = sized(WorkerConfig(work_pool="k", job_variables={"gpus_per_node": 8}), multinode, parallel)
    assert values["gpus_per_node"] == 8 and values["nnodes"] == 3
    job = _render(values)
    kubernetes_validate.validate(job, K8S, strict=True)
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
