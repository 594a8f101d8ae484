"""The fast security battery: upper bounds refused before anything is built, credentials redacted from every
URI shown, manifests that fail closed, fixed work-pool fields, the compose stack's exposure and secrets,
and results that are never pickled. Nothing here starts a server (those are tests/deploy/test_servers.py,
tests/tasks/test_integrity.py and tests/flows/test_concurrency.py)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time

import pytest
import torch
import yaml
from repo import REPO_ROOT

from deploy.check_secrets import problems
from models.families.family import num_params
from models.families.gpt import BYTE_GPT, GPTConfig
from models.families.lookup import family_of
from tasks.config import ConfigError, load_config
from tasks.store import IntegrityError, redact, verify_manifest, write_manifest
from tests.families import TIED, TINY

ROOT = REPO_ROOT
SMOKE = ROOT / "configs" / "smoke.yaml"
DEPLOY = ROOT / "deploy"


# --- bounds: one line, before anything is built ----------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["stages.0.n_layers=1000000"], "stages.0.n_layers 1000000 exceeds limits.max_layers 256"),
        (["stages.2.n_layers=300"], "stages.2.n_layers 300 exceeds limits.max_layers 256"),
        (["model.context=100000"], "model.context 100000 exceeds limits.max_context 16384"),
        (["model.d_model=32768", "model.n_heads=4"], "model.d_model 32768 exceeds limits.max_d_model 16384"),
        (
            ["limits.max_d_model=48", "stages.1.growth.operator=width"],
            "stages.1: d_model 64 exceeds limits.max_d_model",
        ),
        (["stages.0.nproc=64", "train.batch_size=64"], "stages.0.parallel.nproc 64 exceeds"),
        (["limits.max_nproc=1", "stages.1.nproc=2"], "stages.1.parallel.nproc 2 exceeds 1 (limits.max_nproc)"),
        (["limits.memory_bytes=1000000"], "but limits.memory_bytes is 1.0 MiB"),
        (
            [
                "model.d_model=8192",
                "model.n_heads=8",
                "model.d_ff=32768",
                "model.context=8192",
                "stages.2.n_layers=200",
            ],
            "this machine's RAM",
        ),
    ],
)
def test_configs_beyond_the_limits_are_refused_in_one_line_quickly(overrides, message):
    began = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_config(SMOKE, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert time.perf_counter() - began < 2  # refused by arithmetic, not by building a million layers


def test_a_raised_limit_lets_the_same_config_through():
    load_config(SMOKE, ["stages.2.n_layers=300", "limits.max_layers=512"])


def test_the_cli_refuses_a_cap_with_exit_2_and_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli.main", "run", str(SMOKE), "--workdir", str(tmp_path / "w")]
        + ["--set", "stages.0.n_layers=1000000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "staged: error: invalid config: stages.0.n_layers 1000000 exceeds limits.max_layers 256"
    ]
    assert not (tmp_path / "w").exists()  # nothing was created, let alone trained


@pytest.mark.parametrize(
    "cfg",
    [GPTConfig(n_layers=1, d_model=8, n_heads=2, d_ff=16, context=4), GPTConfig(), GPTConfig(n_layers=12, context=64)]
    + [*TINY.values(), *TIED.values()],
)
def test_the_parameter_count_is_exact(cfg):
    family = family_of(cfg)
    with torch.device("meta"):
        assert family.num_params(cfg) == num_params(family.build(cfg))


def test_the_estimate_counts_adamw_and_grows_with_the_batch():
    cfg = GPTConfig()
    small, large = BYTE_GPT.footprint(cfg, 8), BYTE_GPT.footprint(cfg, 16)
    assert small.optimizer == 2 * small.weights == 2 * small.grads == 8 * BYTE_GPT.num_params(cfg)
    assert large.activations == 2 * small.activations and large.weights == small.weights
    with pytest.raises(ValueError, match="unknown model.arch 'moe'"):
        family_of({"arch": "moe"})


# --- redaction: one function, everywhere -----------------------------------------------------------


@pytest.mark.parametrize(
    "text, shown",
    [
        ("http://admin:s3cret@127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("https://user@mlflow.example.com/#/models/x", "https://mlflow.example.com/#/models/x"),
        ("postgresql://mlflow:pw%40x@db:5432/mlflow", "postgresql://db:5432/mlflow"),
        ("s3://AKIA:secret@bucket/key", "s3://bucket/key"),
        ("cannot reach http://a:b@h:1/api and https://c:d@k/x", "cannot reach http://h:1/api and https://k/x"),
        ("https://h/x?X-Amz-Signature=abc123&other=1", "https://h/x?X-Amz-Signature=***&other=1"),
        ("http://h/api?token=t0k3n", "http://h/api?token=***"),
        ("http://127.0.0.1:5000/#/experiments/1", "http://127.0.0.1:5000/#/experiments/1"),
        ("/abs/path/with@sign/file", "/abs/path/with@sign/file"),
        ("no uri here: user:password", "no uri here: user:password"),
    ],
)
def test_redact(text, shown):
    assert redact(text) == shown


def test_a_tracking_uri_with_credentials_is_used_without_them(monkeypatch):
    from tasks.registry import Registry

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://admin:s3cret@127.0.0.1:5000")
    registry = Registry.resolve("/nonexistent")
    assert registry.tracking_uri == "http://127.0.0.1:5000"  # MLflow's own messages print this one
    assert registry.run_page("1", "r") == "http://127.0.0.1:5000/#/experiments/1/runs/r"
    import os

    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("admin", "s3cret")
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"  # what child processes inherit


def test_command_line_errors_are_redacted(capsys):
    from flows.cli.errors import fail

    with pytest.raises(SystemExit):
        fail("MLflow tracking URI http://admin:s3cret@h:5000 unreachable")
    assert "s3cret" not in capsys.readouterr().err


def test_a_failure_report_carries_no_credentials():
    from tasks.config import load_config as load
    from tasks.publish.monitor import failure_markdown

    spec = load(SMOKE).stage_specs()[0]
    md = failure_markdown(spec, ConnectionError("API request to http://admin:s3cret@h:5000/api failed"), "x", 0, None)
    assert "s3cret" not in md and "http://h:5000/api" in md


# --- manifests fail closed -------------------------------------------------------------------------


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    (d / "code" / "models").mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"weights")
    (d / "config.json").write_text('{"n_heads": 4}')
    (d / "tokenizer.json").write_text('{"vocab": {}}')
    (d / "code" / "models" / "gpt.py").write_text("x = 1\n")
    return d, write_manifest(d)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: (d / "config.json").write_text('{"n_heads": 2}'), "config.json does not match"),
        (lambda d: (d / "tokenizer.json").write_text('{"vocab": {"a": 1}}'), "tokenizer.json does not match"),
        (lambda d: (d / "code" / "models" / "gpt.py").write_text("import os\n"), "code/models/gpt.py does not match"),
        (lambda d: (d / "code" / "models" / "evil.py").write_text("import os\n"), "evil.py is not in its manifest"),
        (lambda d: (d / "model.safetensors").unlink(), "model.safetensors is missing"),
        (lambda d: (d / "staged-manifest.json").write_text("{}"), "does not match the registered"),
        (lambda d: (d / "x.pt").symlink_to(d / "model.safetensors"), "symbolic link"),
    ],
)
def test_a_changed_directory_is_refused(model_dir, change, message):
    d, digest = model_dir
    verify_manifest(d, digest)
    change(d)
    with pytest.raises(IntegrityError, match=message):
        verify_manifest(d, digest, "model 'm' version 1")


def test_the_note_mlflow_itself_writes_into_a_local_store_is_not_a_tamper(model_dir):
    """``mlflow.pyfunc.load_model("models:/…")`` on a local store writes registered_model_meta into the version."""
    d, digest = model_dir
    (d / "registered_model_meta").write_text("model_name: m\nmodel_version: '1'\n")
    verify_manifest(d, digest)


def test_a_version_without_a_manifest_tag_is_refused(model_dir):
    d, _ = model_dir
    with pytest.raises(IntegrityError, match="no manifest sha256 is registered"):
        verify_manifest(d, None)


# --- deployment files ------------------------------------------------------------------------------


def test_the_compose_stack_publishes_on_loopback_and_requires_credentials():
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    env = {name: service.get("environment") or {} for name, service in services.items()}
    assert env["prefect-server"]["PREFECT_SERVER_API_AUTH_STRING"].startswith("${PREFECT_AUTH_STRING")
    assert env["worker"]["PREFECT_API_AUTH_STRING"].startswith("${PREFECT_AUTH_STRING")
    assert "basic-auth" in services["mlflow"]["command"]
    assert env["mlflow"]["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD")
    assert env["worker"]["MLFLOW_TRACKING_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD")
    holders = {name for name, e in env.items() if any("MINIO_ROOT_PASSWORD" in str(v) for v in e.values())}
    assert holders == {"secrets-check", "minio", "minio-setup"}  # the root keys create, nothing else uses them
    for name in ("mlflow", "worker"):
        assert env[name]["AWS_ACCESS_KEY_ID"].startswith("${MINIO_APP_USER")
    policy = json.loads((DEPLOY / "minio-app-policy.json").read_text())
    assert {r for s in policy["Statement"] for r in s["Resource"]} == {
        "arn:aws:s3:::STAGED_BUCKET",
        "arn:aws:s3:::STAGED_BUCKET/*",
    }

    def waits_for_check(name: str, seen: frozenset = frozenset()) -> bool:
        deps = services[name].get("depends_on") or {}
        return "secrets-check" in deps or any(waits_for_check(d, seen | {name}) for d in deps if d not in seen)

    assert all(waits_for_check(n) for n in services if n != "secrets-check")


def test_placeholder_and_short_secrets_are_refused():
    example = dict(line.split("=", 1) for line in (DEPLOY / ".env.example").read_text().splitlines() if "=" in line)
    assert len(problems(example)) == 6  # the shipped example cannot start the stack
    good = "3f9a1c0b7d2e4f6a8b9c0d1e2f3a4b5c"
    names = ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MINIO_APP_PASSWORD", "MLFLOW_ADMIN_PASSWORD")
    env = {n: good for n in (*names, "MLFLOW_FLASK_SECRET_KEY")} | {"PREFECT_AUTH_STRING": f"staged:{good}"}
    assert problems(env) == []
    assert problems(env | {"POSTGRES_PASSWORD": "short1"}) == ["POSTGRES_PASSWORD is shorter than 16 characters"]
    assert "placeholder" in problems(env | {"MLFLOW_ADMIN_PASSWORD": "change-me-change-me"})[0]
    assert "URL-safe" in problems(env | {"MINIO_APP_PASSWORD": good + "@/"})[0]
    assert problems(env | {"PREFECT_AUTH_STRING": good}) == ["PREFECT_AUTH_STRING must be user:password"]


def _render(kind: str, values: dict) -> dict:
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration

    template = json.loads((DEPLOY / f"work-pools/{kind}.json").read_text())
    defaults = BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"])
    return template, apply_values(template["job_configuration"], {**defaults, **values})


def test_work_pool_fields_that_would_escape_the_sandbox_are_fixed():
    """A deployment's job variables cannot turn them on: they are not variables, and rendering ignores them."""
    attack = {"privileged": True, "volumes": ["/:/host"], "network_mode": "host", "container_create_kwargs": {}}
    template, docker = _render("docker", attack)
    assert not set(attack) & set(template["variables"]["properties"])
    assert docker["privileged"] is False and docker["volumes"] == [] and docker["network_mode"] is None
    assert docker["container_create_kwargs"]["cap_drop"] == ["ALL"]
    attack = {"namespace": "kube-system", "service_account_name": "admin", "secret_name": "cluster-admin"}
    template, k8s = _render("kubernetes", attack)
    assert not set(attack) & set(template["variables"]["properties"])
    pod = k8s["job_manifest"]["spec"]["template"]["spec"]
    assert k8s["namespace"] == k8s["job_manifest"]["metadata"]["namespace"] == "staged"
    assert pod["serviceAccountName"] == "staged-flow-run" and pod["automountServiceAccountToken"] is False
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "staged-env"}}]
    assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_servers_environment_is_allow_listed(monkeypatch):
    from deploy.local.secrets import base_env

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "users-own-cloud-key")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_x")
    env = base_env()
    assert "PATH" in env and "AWS_SECRET_ACCESS_KEY" not in env and "GITHUB_TOKEN" not in env


def test_a_recorded_pid_that_is_not_ours_is_never_signalled(tmp_path):
    from deploy.local.servers import Servers, down

    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        record = {"cmdline": ["prefect", "worker", "start"], "started": time.time()}  # what we once started
        Servers(
            dir=str(tmp_path),
            ports={},
            pgdata=str(tmp_path / "pg"),
            pids={"worker": other.pid},
            processes={"worker": record},
        ).save()
        assert down(tmp_path) == []
        assert other.poll() is None  # the process that now has that PID lives on
    finally:
        other.kill()
        other.wait()


# --- results are never pickled ---------------------------------------------------------------------


def test_every_prefect_task_and_flow_persists_no_result():
    for path in sorted(p for pkg in ("tasks", "flows", "bench") for p in (ROOT / pkg).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("task", "flow"):
                kw = {k.arg: k.value for k in node.keywords}
                assert "persist_result" in kw and kw["persist_result"].value is False, f"{path}:{node.lineno}"


def test_a_cycle_in_the_lineage_tags_is_an_error_not_an_endless_loop(workdir):
    """The model card walks ``parent_version`` tags (the only lineage walk); a tampered registry may loop."""
    from tasks.publish.card import lineage
    from tasks.registry import ModelRef, Registry
    from tasks.registry.schema import VersionTags

    client = Registry.resolve(workdir).client()
    client.create_registered_model("looped")
    run = client.create_run(client.create_experiment("looped"))
    for version, parent in (("1", "2"), ("2", "1")):
        fields = {"stage": int(version), "n_layers": 1, "parent_version": parent, "weights_sha256": "w"}
        fields |= {"stage_key": version, "growth": "stack", "data_cursor": 0, "global_step": 0}
        tags = VersionTags(**fields, config_hash="c", code_version="v", val_loss=1.0)
        client.create_model_version("looped", source="/x", run_id=run.info.run_id, tags=tags.to_tags())
    with pytest.raises(ValueError, match="the lineage of version 2 loops at version 2"):
        lineage(client, ModelRef.of(client.get_model_version("looped", "2")))
