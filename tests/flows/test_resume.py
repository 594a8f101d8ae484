"""Crash and resume, for real: a `staged run` subprocess is SIGKILLed at a random point inside a
stage, the same command is rerun, and the result must equal an uninterrupted run bit for bit.

Each CLI subprocess costs ~10-20 s of Prefect start-up, so each test uses exactly two.
"""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAKE_KEY, FAKE_SECRET
from repo import REPO_ROOT

from flows.staged import staged_training
from tasks.config import load_config
from tasks.registry import Registry

pytestmark = pytest.mark.integration
ROOT = REPO_ROOT
SMOKE = ROOT / "configs" / "smoke.yaml"
# longer stages than the smoke test, so that a kill lands inside one; a checkpoint every 2 steps
OVERRIDES = ["checkpoint.every=2", "stages.0.steps=30", "stages.1.steps=16", "stages.2.steps=8"]


class Reference(list):
    """The uninterrupted run's weights_sha256 per stage, and its workdir."""

    def __init__(self, workdir: Path, shas: list[str]):
        super().__init__(shas)
        self.workdir = workdir


@pytest.fixture(scope="module")
def reference(prefect_harness, tmp_path_factory):
    """weights_sha256 per stage of an uninterrupted run (in-process, same seed, same CPU)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        workdir = tmp_path_factory.mktemp("reference")
        results = staged_training(load_config(SMOKE, OVERRIDES), str(workdir))
    return Reference(workdir, [r.ref.weights_sha256 for r in results])


def _cmd(workdir: Path, *extra: str) -> list[str]:
    sets = [a for o in OVERRIDES + list(extra) for a in ("--set", o)]
    return [sys.executable, "-m", "flows.cli.main", "run", str(SMOKE), "--workdir", str(workdir), *sets]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"MLFLOW_TRACKING_URI", "PREFECT_API_URL"}}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _kill_inside_a_stage(cmd, env, manifests) -> list[str]:
    """Start the run in its own process group; after a random number of checkpoints (and a random
    few ms more) SIGKILL the whole group, Prefect's server included, as a preempted node would.
    Returns the checkpoint manifests that existed at the kill."""
    rng = random.Random(os.environ.get("RESUME_TEST_SEED"))
    target = rng.randint(1, 24)  # 15 + 8 + 4 checkpoints in all: any stage may be hit
    print(f"killing after checkpoint #{target} (+ a few ms)")
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    seen: set[str] = set()
    deadline = time.monotonic() + 300
    while len(seen) < target and proc.poll() is None and time.monotonic() < deadline:
        seen |= set(manifests())
        time.sleep(0.02)
    time.sleep(rng.uniform(0, 0.05))
    at_kill = manifests()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return at_kill


def _check_rerun(proc, workdir: Path, reference: list[str], at_kill: list[str]) -> Registry:
    assert proc.returncode == 0, proc.stderr[-3000:]
    registry = Registry.resolve(workdir)
    versions = registry.client().search_model_versions("name = 'staged-smoke'")
    assert sorted(v.tags["stage"] for v in versions) == ["1", "2", "3"]  # exactly one version per stage
    by_stage = {v.tags["stage"]: v.tags["weights_sha256"] for v in versions}
    assert [by_stage[s] for s in "123"] == reference  # stage 3 included: bit for bit the uninterrupted run
    newest = {}
    for m in at_kill:  # <stage key>/step-<n>/manifest.json
        key, step = m.split("/")[-3], int(m.split("/")[-2][5:])
        newest[key] = max(newest.get(key, 0), step)
    resumed = [line for line in (proc.stdout + proc.stderr).splitlines() if "resuming from checkpoint step" in line]
    for line in resumed:  # the cut stage resumed from the newest checkpoint at the kill: <= 2 steps lost
        assert any(f"step {s} of" in line for s in newest.values()), (line, newest)
    print(f"checkpoints at the kill: {newest}; resumed: {resumed}")
    return registry


def test_sigkill_inside_a_stage_then_rerun_matches_an_uninterrupted_run(reference, tmp_path):
    workdir = tmp_path / "work"
    ckpts = workdir / "checkpoints"
    at_kill = _kill_inside_a_stage(
        _cmd(workdir), _env(), lambda: [str(p) for p in ckpts.glob("*/step-*/manifest.json")]
    )
    proc = subprocess.run(_cmd(workdir), env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    _check_rerun(proc, workdir, reference, at_kill)


def test_s3_end_to_end_checkpoints_and_artifacts_in_the_bucket_resume_reads_them(reference, s3_env, tmp_path):
    from tasks.store import s3_client

    bucket, workdir = s3_env, tmp_path / "work"
    client = s3_client()

    def manifests() -> list[str]:
        found = client.list_objects_v2(Bucket=bucket, Prefix="run/checkpoints/").get("Contents", [])
        return [o["Key"] for o in found if o["Key"].endswith("manifest.json")]

    cmd, env = _cmd(workdir, f"storage.uri=s3://{bucket}/run"), _env()
    at_kill = _kill_inside_a_stage(cmd, env, manifests)
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    registry = _check_rerun(proc, workdir, reference, at_kill)

    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    ]
    assert any(k.startswith("run/checkpoints/") and k.endswith("model.safetensors") for k in keys)
    assert sum(k.startswith("run/mlartifacts/") and k.endswith("/model/model.safetensors") for k in keys) == 3
    assert not list(workdir.glob("mlartifacts")) and not list(workdir.glob("checkpoints"))

    # no secrets anywhere: console output, every MLflow param and tag, the Prefect and MLflow databases
    client_ml = registry.client()
    texts = [proc.stdout, proc.stderr]
    for v in client_ml.search_model_versions("name = 'staged-smoke'"):
        run = client_ml.get_run(v.run_id)
        texts += [repr(v.tags), repr(run.data.params), repr(run.data.tags)]
    for db in ("mlflow.db", "prefect.db"):
        texts.append((workdir / db).read_bytes().decode("latin-1"))
    with sqlite3.connect(workdir / "prefect.db") as con:
        texts += [repr(row) for row in con.execute("select message from log")]
    for secret in (FAKE_KEY, FAKE_SECRET):
        assert not any(secret in t for t in texts), secret


def test_a_task_retry_after_a_full_disk_resumes_from_the_intact_checkpoint(reference, tmp_path, monkeypatch):
    """Stage 1's checkpoint at step 4 hits ENOSPC (/dev/full); Prefect retries the task, which
    resumes from step 2 and still ends bit for bit where the uninterrupted run did. (The writer's random
    temporary-name suffix is fixed so that the test can put /dev/full there.)"""
    import tasks.store.storage as storage_module
    from tasks.config import stage_key

    monkeypatch.setattr(storage_module.secrets, "token_hex", lambda n: "fixed")
    config = load_config(SMOKE, OVERRIDES + ["retry.retries=1", "retry.delay_s=0"])
    workdir = tmp_path / "work"
    full = workdir / "checkpoints" / stage_key(config.stage_specs()[0], None) / "step-00000004"
    full.mkdir(parents=True)
    (full / f"model.safetensors.{os.getpid()}-fixed.partial").symlink_to("/dev/full")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        results = staged_training(config, str(workdir))
    assert results[0].resumed_from == 2 and results[1].resumed_from is None
    assert [r.ref.weights_sha256 for r in results] == reference


def test_a_nan_loss_fails_the_stage_with_its_step_and_keeps_the_last_good_checkpoint(prefect_harness, tmp_path):
    from tasks.config import stage_key
    from tasks.store import LocalStorage, checkpoint

    config = load_config(
        SMOKE,
        [
            "checkpoint.every=1",
            "stages.0.steps=5",
            "stages.0.train.lr=1e30",
            "stages.0.train.grad_clip=1e30",
            "stages.0.train.warmup_steps=0",
        ],
    )
    workdir = tmp_path / "work"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        state = staged_training(config, str(workdir), return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "stage 1: loss is" in message and "at step 2; stopped, last good checkpoint: step 1" in message, message
    storage = LocalStorage(workdir / "checkpoints")
    assert checkpoint.latest(storage, stage_key(config.stage_specs()[0], None)).step == 1
    assert Registry.resolve(workdir).client().search_model_versions("name = 'staged-smoke'") == []


def test_from_version_starts_a_pipeline_from_a_registered_version(reference):
    """--from-version 2 with a changed stage 3: version 2 is reported as given, a new stage 3 grows from it."""
    config = load_config(SMOKE, OVERRIDES + ["stages.2.steps=3"])
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        results = staged_training(config, str(reference.workdir), from_version="2")
    assert [(r.ref.stage, r.ref.version, r.skipped) for r in results] == [(2, "2", True), (3, "4", False)]
    assert results[1].ref.stage_key != "" and results[1].steps == 3
    version = Registry.resolve(reference.workdir).client().get_model_version("staged-smoke", "4")
    assert version.tags["parent_version"] == "2"
