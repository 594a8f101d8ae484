"""SIGKILL of one FSDP rank inside a stage, then the same command again: it resumes from the sharded
checkpoint (each rank reads its shards back) and ends where an uninterrupted 2-rank run ends."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from repo import REPO_ROOT

from flows.staged import staged_training
from tasks.config import load_config
from tasks.registry import Registry

pytestmark = pytest.mark.integration
ROOT = REPO_ROOT
SMOKE = ROOT / "configs" / "smoke.yaml"
OVERRIDES = ["checkpoint.every=2", "stages.0.steps=16", "stages.1.steps=2", "stages.2.steps=1"]
OVERRIDES += ["stages.0.parallel={strategy: fsdp, nproc: 2}"]


def _cmd(workdir: Path) -> list[str]:
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    return [sys.executable, "-m", "flows.cli.main", "run", str(SMOKE), "--workdir", str(workdir), *sets]


def _env() -> dict[str, str]:
    """The embedded MLflow store; the session's Prefect test server (a kill of one rank leaves the launcher and
    its server alive, so this saves each process ~10 s of starting a temporary one, and tests nothing less)."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PREFECT_API_URL": PREFECT_API_URL.value()}


def _ranks_of(root: int) -> list[int]:
    """PIDs of the torchrun workers among ``root``'s descendants (the launcher itself excluded)."""
    parent, cmdline = {}, {}
    for proc in Path("/proc").iterdir():
        try:
            parent[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline[int(proc.name)] = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue

    def descends(pid: int) -> bool:
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == root:
                return True
        return False

    return sorted(
        pid
        for pid, cmd in cmdline.items()
        if b"tasks.parallel.worker" in cmd and b"tasks.parallel.rendezvous" not in cmd and descends(pid)
    )


@pytest.fixture(scope="module")
def uninterrupted(prefect_harness, tmp_path_factory):
    """weights_sha256 per stage of the same 2-rank pipeline, never interrupted."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("OMP_NUM_THREADS", "1")
        results = staged_training(load_config(SMOKE, OVERRIDES), str(tmp_path_factory.mktemp("uninterrupted")))
    return [r.ref.weights_sha256 for r in results]


def test_sigkill_of_one_rank_then_rerun_resumes_from_the_sharded_checkpoint(uninterrupted, tmp_path):
    workdir = tmp_path / "work"
    proc = subprocess.Popen(
        _cmd(workdir), env=_env(), cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    manifests = lambda: list((workdir / "checkpoints").glob("*/step-*/manifest.json"))  # noqa: E731
    while len(manifests()) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    ranks = _ranks_of(proc.pid)
    assert len(ranks) == 2, "stage 1 ended before a rank could be killed"
    os.kill(ranks[1], signal.SIGKILL)  # one rank, as an OOM killer or a lost GPU would
    _, err = proc.communicate(timeout=300)
    at_kill = max(int(m.parent.name[5:]) for m in manifests())  # no manifest can follow: it needs every rank
    errors = [line for line in err.decode(errors="replace").splitlines() if line.startswith("staged: error:")]
    assert proc.returncode == 1 and len(errors) == 1 and errors[0].startswith("staged: error: run failed: stage 1: ")
    assert re.search(r"rank \d was killed by SIGKILL; torchrun stopped the others$", errors[0]), errors[0]
    print(errors[0])
    assert Registry.resolve(workdir).client().search_model_versions("name = 'staged-smoke'") == []

    rerun = subprocess.run(_cmd(workdir), env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = [line for line in (rerun.stdout + rerun.stderr).splitlines() if "resumed from checkpoint step" in line]
    print(f"killed rank {ranks[1]} after the step-{at_kill} checkpoint; rerun: {resumed}")
    assert resumed and f"resumed from checkpoint step {at_kill}" in resumed[0]  # nothing older than the kill
    versions = Registry.resolve(workdir).client().search_model_versions("name = 'staged-smoke'")
    by_stage = {v.tags["stage"]: v.tags["weights_sha256"] for v in versions}
    assert [by_stage[s] for s in "123"] == uninterrupted  # bit for bit the uninterrupted 2-rank run
