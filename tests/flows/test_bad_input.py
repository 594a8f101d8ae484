"""The bad-input battery: every case ends in one line on stderr, a non-zero exit, no traceback,
and no change to the registry or the storage.

Cases run ``flows.cli.main`` in-process (the same function the command runs; an uncaught
exception would fail the test); test_cli.py and the last test here run real subprocesses.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port
from repo import REPO_ROOT

from flows.cli.main import main
from models.families.gpt import GPT
from tasks.config import load_config
from tasks.registry import Registry, register
from tasks.registry.schema import VersionTags
from tasks.store import save_model, save_optimizer
from tests.versions import stage1_tags, stage_params

ROOT = REPO_ROOT
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def _registry(workdir: Path, tamper: bool = False) -> Path:
    """A workdir whose embedded registry holds version 1 (stage 1 of smoke.yaml, untrained)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        spec = load_config(SMOKE).stage_specs()[0]
        model, out = GPT(spec.model), workdir / "model"
        sha = save_model(model, out)
        opt = save_optimizer({}, out)
        tags = stage1_tags(sha, "k1", optimizer_sha256=opt)
        params = stage_params(spec)
        registry = Registry.resolve(workdir)
        register(
            registry,
            spec.model_name,
            spec.experiment,
            model_dir=out,
            tags=tags,
            params=params,
            metrics={"val_loss": [(0, 5.0)]},
        )
    if tamper:
        weights = next((workdir / "mlartifacts").rglob("model.safetensors"))
        weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    return workdir


@pytest.fixture(scope="module")
def registries(tmp_path_factory):
    return {
        "good": _registry(tmp_path_factory.mktemp("good")),
        "tampered": _registry(tmp_path_factory.mktemp("tampered"), tamper=True),
        "untagged": _untagged(tmp_path_factory.mktemp("untagged")),
    }


def _snapshot(workdir: Path) -> dict[str, str]:
    if not workdir.exists():
        return {}
    return {
        str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(workdir.rglob("*"))
        if p.is_file()
    }


def _file(tmp: Path, text: str) -> str:
    (tmp / "c.yaml").write_text(text)
    return str(tmp / "c.yaml")


def _untagged(workdir: Path) -> Path:
    """A registry whose version 1 carries none of the stage tags (a version registered by other means)."""
    _registry(workdir)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        client = Registry.resolve(workdir).client()
        for key in VersionTags.model_fields:
            client.delete_model_version_tag("staged-smoke", "1", key)
    return workdir


def _not_dir(tmp: Path) -> str:
    (tmp / "file").write_text("")
    return str(tmp / "file" / "sub")


SET = lambda *items: [a for i in items for a in ("--set", i)]  # noqa: E731
ONE_STAGE = (
    "registry: {model_name: staged-smoke}\nmodel: {d_model: 32, n_heads: 2, d_ff: 64, context: 32}\n"
    "stages: [{n_layers: 3, steps: 1}]\n"
)
# id: (config, extra args, workdir: fresh | good | tampered | <callable>, env, exit code, message)
CASES = {
    "missing config": (lambda t: "nope.yaml", [], "fresh", {}, 2, "config file 'nope.yaml' not found"),
    "malformed yaml": (lambda t: _file(t, "seed: [1\n"), [], "fresh", {}, 2, "is not valid YAML (line 2)"),
    "not a mapping": (lambda t: _file(t, "- 1\n"), [], "fresh", {}, 2, "must hold a mapping"),
    "empty config": (lambda t: _file(t, ""), [], "fresh", {}, 2, "config file is empty"),
    "comments-only config": (
        lambda t: _file(t, "# seed: 1\n\n"),
        SET("seed=1"),
        "fresh",
        {},
        2,
        "config file is empty",
    ),
    "unknown top-level key": (
        lambda t: _file(t, "sead: 1\n"),
        [],
        "fresh",
        {},
        2,
        "sead: Extra inputs are not permitted",
    ),
    "unknown stage key": (None, SET("stages.0.layers=3"), "fresh", {}, 2, "Extra inputs are not permitted"),
    "wrong type lr": (None, SET("train.lr=fast"), "fresh", {}, 2, "train.lr: Input should be a valid number"),
    "wrong type checkpoint_every": (
        None,
        SET("checkpoint.every=often"),
        "fresh",
        {},
        2,
        "checkpoint.every: Input should be a valid integer",
    ),
    "negative steps": (None, SET("stages.0.steps=-1"), "fresh", {}, 2, "greater than or equal to 0"),
    "unknown depth-muP mode": (
        None,
        SET("model.depth_mup=quarter"),
        "fresh",
        {},
        2,
        "depth_mup: Input should be 'none', 'sqrt' or 'completep'",
    ),
    "growth in the WSD decay": (
        None,
        SET("stages.1.schedule={policy: continue, shape: wsd, decay_fraction: 0.5}"),
        "fresh",
        {},
        2,
        "stages.1.schedule: the growth at global step 20 falls in the WSD decay (steps 17-35 of 35",
    ),
    "steps for ever": (
        None,
        SET("stages.0.steps=1000000000000000000000"),
        "fresh",
        {},
        2,
        "stages.0.steps: Input should be less than or equal to 1000000000",
    ),
    "tokens for ever": (
        None,
        SET("stages.2.steps=null", "stages.2.until.tokens=10000000000000"),
        "fresh",
        {},
        2,
        "stages.2.until.tokens: Input should be less than or equal to 1000000000000",
    ),
    "zero layers": (
        None,
        SET("stages.0.n_layers=0"),
        "fresh",
        {},
        2,
        "n_layers: Input should be greater than or equal to 1",
    ),
    "zero d_model": (None, SET("model.d_model=0"), "fresh", {}, 2, "d_model"),
    "negative batch size": (None, SET("train.batch_size=-8"), "fresh", {}, 2, "batch_size"),
    "heads do not divide d_model": (
        None,
        SET("model.n_heads=3"),
        "fresh",
        {},
        2,
        "n_heads=3 does not divide d_model=32",
    ),
    "micro batch does not divide batch": (
        None,
        SET("train.micro_batch_size=3"),
        "fresh",
        {},
        2,
        "micro_batch_size 3 does not divide batch_size 8",
    ),
    "micro batch does not divide the per-rank batch": (
        None,
        SET("train.micro_batch_size=8", "stages.1.nproc=2"),
        "fresh",
        {},
        2,
        "stages.1: train.micro_batch_size 8 does not divide the per-rank batch 4",
    ),
    "freeze parent on stage 1": (
        None,
        SET("stages.0.growth.freeze=parent"),
        "fresh",
        {},
        2,
        "stages.0.growth.freeze: parent needs a parent: stage 1 has none",
    ),
    "freeze parent with width growth": (
        None,
        SET("stages.1.growth.operator=width", "stages.1.n_layers=3", "stages.1.growth.freeze=parent"),
        "fresh",
        {},
        2,
        "stages.1.growth.freeze: parent needs a depth operator",
    ),
    # bad layer maps and freezes (issue 30): smoke.yaml grows 3 -> 6 -> 12
    "layer map index outside the parent": (
        None,
        SET("stages.1.growth.layers=[0,1,2,3,1,2]"),
        "fresh",
        {},
        2,
        "stages.1: growth.layers names parent blocks [3], but the parent has blocks 0..2",
    ),
    "empty layer map": (None, SET("stages.1.growth.layers=[]"), "fresh", {}, 2, "growth.layers: Tuple should have"),
    "solar drop at the depth": (
        None,
        SET("stages.1.growth.solar={drop: 3}"),
        "fresh",
        {},
        2,
        "stages.1: growth.solar.drop 3 must be below the parent's depth 3",
    ),
    "every 0": (None, SET("stages.1.growth.every=0"), "fresh", {}, 2, "stages.1.growth.every: Input should be"),
    "freeze a block the child lacks": (
        None,
        SET("stages.1.growth.freeze={blocks: [7]}"),
        "fresh",
        {},
        2,
        "growth.freeze.blocks names child blocks [7], but the child has blocks 0..5",
    ),
    "unknown precision": (None, SET("train.precision=fp16"), "fresh", {}, 2, "train.precision: Input should be"),
    "unknown operator": (
        None,
        SET("stages.1.growth.operator=grow"),
        "fresh",
        {},
        2,
        "stages.1.growth.operator: Input should be",
    ),
    "unknown LR shape": (
        None,
        SET("stages.1.schedule.shape=linear"),
        "fresh",
        {},
        2,
        "stages.1.schedule.shape: Input should be 'cosine' or 'wsd'",
    ),
    "zero WSD decay fraction": (
        None,
        SET("stages.2.schedule.decay_fraction=0"),
        "fresh",
        {},
        2,
        "stages.2.schedule.decay_fraction: Input should be greater than 0",
    ),
    "impossible growth": (None, SET("stages.2.n_layers=8"), "fresh", {}, 2, "cannot stack 6 layers into 8"),
    "no stages": (lambda t: _file(t, "stages: []\n"), [], "fresh", {}, 2, "List should have at least 1 item"),
    "override syntax": (None, ["--set", "steps"], "fresh", {}, 2, "is not of the form dotted.key=value"),
    "override index": (None, SET("stages.9.steps=1"), "fresh", {}, 2, "stages has no item '9' (it has 3)"),
    "negative checkpoint_every": (
        None,
        SET("checkpoint.every=-1"),
        "fresh",
        {},
        2,
        "checkpoint.every: Input should be greater than or equal to 0",
    ),
    "zero checkpoint_keep": (
        None,
        SET("checkpoint.keep=0"),
        "fresh",
        {},
        2,
        "checkpoint.keep: Input should be greater than or equal to 1",
    ),
    "negative stage checkpoint_every": (
        None,
        SET("stages.1.checkpoint.every=-2"),
        "fresh",
        {},
        2,
        "stages.1.checkpoint.every",
    ),
    "infinite learning rate": (None, SET("train.lr=inf"), "fresh", {}, 2, "train.lr: Input should be a finite number"),
    "negative retries": (
        None,
        SET("retry.retries=-1"),
        "fresh",
        {},
        2,
        "retry.retries: Input should be greater than or equal to 0",
    ),
    "invalid S3 URI": (
        None,
        SET("storage.uri=s3:///x"),
        "fresh",
        {},
        2,
        "is not s3://bucket/prefix with a valid bucket name",
    ),
    "credentials in S3 URI": (
        None,
        SET("storage.uri=s3://AKIAX:hunter2@bucket/x"),
        "fresh",
        {},
        2,
        "credentials do not belong in storage.uri",
    ),
    "unsupported storage scheme": (None, SET("storage.uri=gs://b/x"), "fresh", {}, 2, "unsupported scheme 'gs'"),
    "storage that cannot be a directory": (
        lambda t: _file(t, ONE_STAGE + f"storage: {{uri: {_not_dir(t)}}}\n"),
        [],
        "fresh",
        {},
        2,
        "is not a writable directory",
    ),
    "missing data": (None, SET("data.source=/nonexistent/corpus"), "fresh", {}, 2, "is neither a file nor a directory"),
    "unwritable workdir": (None, [], _not_dir, {}, 2, "is not writable"),
    "non-existent parent version": (
        None,
        ["--from-version", "7"],
        "good",
        {},
        2,
        "model 'staged-smoke' has no version 7",
    ),
    "parent version not a number": (None, ["--from-version", "latest"], "good", {}, 2, "is not a version number"),
    "parent version without a registry": (None, ["--from-version", "1"], "fresh", {}, 2, "no registry in workdir"),
    "parent is the last stage": (
        lambda t: _file(t, ONE_STAGE),
        ["--from-version", "1"],
        "good",
        {},
        2,
        "no later stage to run",
    ),
    "parent without stage tags": (
        None,
        ["--from-version", "1"],
        "untagged",
        {},
        2,
        "--from-version 1: not a stage version: model 'staged-smoke' version 1 carries no stage tags",
    ),
    "tampered parent weights": (
        None,
        ["--from-version", "1"],
        "tampered",
        {},
        2,
        "refusing a parent whose files do not verify",
    ),
    "unreachable tracking URI": (
        None,
        [],
        "fresh",
        {"MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}"},
        1,
        "MLflow tracking URI http://127.0.0.1:{port} unreachable",
    ),
    "MLflow setting that does not parse": (
        None,
        [],
        "fresh",
        {"MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0.1"},
        2,
        "MLflow settings: Failed to convert '0.1' for MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    ),
    "unreachable S3 endpoint": (
        None,
        SET("storage.uri=s3://bucket/x", "storage.max_attempts=2"),
        "fresh",
        {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:{port}"},
        1,
        "S3 endpoint http://127.0.0.1:{port}: head",
    ),
    "missing S3 bucket": (
        None,
        SET("storage.uri=s3://no-such-bucket/x"),
        "fresh",
        "s3",
        2,
        "bucket 'no-such-bucket' does not exist",
    ),
    "resume with nothing to resume": (None, ["resume"], "fresh", {}, 2, "nothing to resume"),
    "fsdp with one process": (
        None,
        SET("stages.0.parallel={strategy: fsdp, nproc: 1}"),
        "fresh",
        {},
        2,
        "stages.0.parallel: strategy fsdp with 1 process shards nothing",
    ),
    "nproc above the cores here": (
        None,
        SET("train.batch_size=512", "stages.0.parallel={strategy: fsdp, nproc: 512}"),
        "fresh",
        {},
        2,
        "stages.0.parallel.nproc 512 exceeds 2 (usable CPU cores)",
    ),
    "nnodes without a rendezvous endpoint": (
        None,
        SET("stages.1.parallel={nproc: 1, nnodes: 2}"),
        "fresh",
        {},
        2,
        "stages.1.parallel: nnodes 2 needs rdzv_endpoint",
    ),
    "world size does not divide the batch": (
        None,
        SET(
            "stages.0.parallel={strategy: fsdp, nproc: 2, nnodes: 2, rdzv_endpoint: 'node0:29400'}",
            "train.batch_size=6",
        ),
        "fresh",
        {},
        2,
        "train.batch_size 6 is not divisible by nproc x nnodes = 4",
    ),
    "job variables without a work pool": (
        None,
        SET("stages.1.job_variables={gpu_count: 2}"),
        "fresh",
        {},
        2,
        "stages.1: job_variables need a work_pool",
    ),
    "work pool name": (
        None,
        SET("worker.work_pool=two words"),
        "fresh",
        {},
        2,
        "worker.work_pool: String should match",
    ),
    # the pool refusals that need a Prefect server: tests/deploy/test_pools.py
    "work pool with a local registry": (
        None,
        SET("stages.2.work_pool=gpu"),
        "fresh",
        {},
        2,
        "stages.2.work_pool 'gpu': the registry sqlite:",
    ),
    # an approval needs a Prefect server a person reaches (flows/approve.py); resumed and timed out: test_approve.py
    "approval without a Prefect server": (
        None,
        SET("stages.1.approve=true"),
        "fresh",
        {},
        2,
        "stages.1.approve: a person resumes the paused flow run in the Prefect UI",
    ),
    "approval timeout": (
        None,
        SET("stages.1.approve_timeout_s=0"),
        "fresh",
        {},
        2,
        "stages.1.approve_timeout_s: Input should be greater than or equal to 1",
    ),
    "system metrics": (None, SET("train.system_metrics=maybe"), "fresh", {}, 2, "train.system_metrics: Input should"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case, tmp_path, registries, monkeypatch, capsys, request):
    config, extra, where, env, code, message = CASES[case]
    port = free_port()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for k, v in {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",  # an int: MLflow refuses 0.1
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    if env == "s3":
        request.getfixturevalue("s3_env")
        env = {}
    for k, v in env.items():
        monkeypatch.setenv(k, v.format(port=port))
    workdir = registries.get(where) if isinstance(where, str) else Path(where(tmp_path))
    workdir = workdir or tmp_path / "work"
    before = _snapshot(workdir)
    command = "resume" if extra[:1] == ["resume"] else "run"
    args = [
        command,
        config(tmp_path) if config else SMOKE,
        "--workdir",
        str(workdir),
        *[a for a in extra if a != "resume"],
    ]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_.value.code == code, err
    assert len(lines) == 1 and lines[0].startswith("staged: error:") and message.format(port=port) in lines[0], err
    assert "hunter2" not in err
    assert _snapshot(workdir) == before  # nothing registered, nothing stored


def test_the_cli_contract_holds_in_real_processes_too(registries, tmp_path):
    """Registry and network cases as a user meets them: exit code, one line, no traceback."""
    env = {k: v for k, v in os.environ.items() if k not in {"MLFLOW_TRACKING_URI", "PREFECT_API_URL"}}
    env = {
        **env,
        "PYTHONPATH": str(ROOT),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",  # an int: MLflow refuses 0.1
    }
    port = free_port()
    runs = [  # started together: most of each is interpreter start-up
        (["--workdir", str(registries["tampered"]), "--from-version", "1"], {}, 2, "files do not verify"),
        (["--workdir", str(registries["good"]), "--from-version", "9"], {}, 2, "has no version 9"),
        (["--workdir", str(tmp_path / "w")], {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}, 1, "unreachable"),
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "flows.cli.main", "run", SMOKE, *args],
            env={**env, **extra},
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args, extra, _, _ in runs
    ]
    for proc, (_, _, code, message) in zip(procs, runs):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == code, err
        assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in out + err, err
