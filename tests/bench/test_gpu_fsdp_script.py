"""bench/gpu/fsdp.py, the GPU check, in its CPU --tiny mode: it runs and reports every figure (not a timing)."""

import json
import os
import subprocess
import sys

import pytest
from repo import REPO_ROOT

ROOT = REPO_ROOT


@pytest.mark.integration
def test_the_gpu_script_runs_in_tiny_mode_and_reports_every_figure(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "bench/gpu/fsdp.py", "--tiny", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu (--tiny)" and report["peak_flops"] > 0
    runs = {(r["strategy"], r["world"]): r for r in report["runs"]}
    assert set(runs) == {("ddp", 1), ("fsdp", 1), ("ddp", 2), ("fsdp", 2)}
    for r in runs.values():
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 and r["params"] == runs[("ddp", 1)]["params"]
    assert "tokens/s" in proc.stdout and "MFU" in proc.stdout


def test_without_a_gpu_the_full_mode_refuses_in_one_line():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "bench/gpu/fsdp.py"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip() == "gpu_fsdp: no CUDA device here; use --tiny for the CPU check"
