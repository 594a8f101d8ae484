"""`staged bench` as a user runs it: a real subprocess (its mistakes in-process too), one line and exit 2 for each
mistake, its JSON's shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from repo import REPO_ROOT

ROOT = REPO_ROOT
TINY = ["--preset", "tiny", "--no-flow", "--no-publish", "--set", "budgets=[0.03]", "--set", "tuning.trials=1"]


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"MLFLOW_TRACKING_URI", "PREFECT_API_URL"}}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli.main", "bench", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"},
        capture_output=True,
        text=True,
        timeout=600,
    )


CASES = {
    "unknown schedule": (["--schedules", "nope"], "unknown schedules ['nope']"),
    "held-out seed that is a tuning seed": (["--seeds", "0,1"], "held-out seeds [0] are also tuning seeds"),
    "seeds not numbers": (["--seeds", "a,b"], "expected comma-separated integers"),
    "negative budget": (["--set", "budgets=[-1]"], "budgets must be positive"),
    "unknown preset field": (["--set", "tuning.trails=3"], "tuning.trails: Extra inputs are not permitted"),
    "flow budget not a budget": (["--set", "flow_budget=3"], "flow_budget 3 is not one of the budgets"),
    "output in a missing directory": (["--out", "/nonexistent/dir/x.json"], "not a file in an existing directory"),
}


@pytest.mark.parametrize("case", CASES)
def test_mistakes_exit_2_with_one_line(case, tmp_path, capsys, monkeypatch):
    """In-process (the same ``main`` the console script calls; the first case also as a real process)."""
    from flows.cli.main import main

    args, message = CASES[case]
    out = [] if "--out" in args else ["--out", str(tmp_path / "b.json")]
    argv = [*TINY, *out, *args, "--workdir", str(tmp_path / "w")]
    if case == next(iter(CASES)):
        proc = bench(*argv, cwd=tmp_path)
        code, err = proc.returncode, proc.stderr
    else:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # set: `staged bench` does not re-exec itself
        with pytest.raises(SystemExit) as exit_:
            main(["bench", *argv])
        code, err = exit_.value.code, capsys.readouterr().err
    assert code == 2, err
    assert err.strip().count("\n") == 0 and message in err and "Traceback" not in err
    assert not (tmp_path / "b.json").exists()


def test_the_written_json_has_the_shape_every_preset_shares(tmp_path):
    proc = bench(
        *TINY, "--schedules", "late-jump", "--out", str(tmp_path / "b.json"), "--workdir", str(tmp_path), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "b.json").read_text())
    assert out["tuning_seeds"] == [0] and out["heldout_seeds"] == [1, 2] and len(out["budgets"]) == 1
    (b,) = out["budgets"]
    assert b["tokens_per_param"] == 0.03 and b["scratch"]["trials"] == 1
    jump = b["schedules"]["late-jump"]
    assert set(jump["flops_ratio"]) >= {"mean", "ci95", "per_seed"} and jump["trials"] == 1
    assert set(jump["time_ratio"]) >= {"mean", "ci95", "per_seed"}
    assert "throughput_ratio_vs_bare_loop" in out and out["orchestration_overhead_fraction"] is None  # --no-flow
    assert "FLOPs to target / scratch" in proc.stdout and (tmp_path / "b.png").stat().st_size > 0


def test_only_efficiency_writes_the_throughput_figures(tmp_path):
    proc = bench(
        *TINY, "--only", "efficiency", "--out", str(tmp_path / "e.json"), "--workdir", str(tmp_path), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    eff = json.loads((tmp_path / "e.json").read_text())["efficiency"]
    assert eff["ratio_min"] <= eff["throughput_ratio_vs_bare_loop"] <= eff["ratio_max"] and eff["mfu"] > 0


@pytest.mark.integration
def test_only_orchestration_runs_a_schedule_through_the_prefect_flow(tmp_path):
    out = tmp_path / "o.json"
    proc = bench(
        *TINY,
        "--only",
        "orchestration",
        "--schedules",
        "best",
        "--out",
        str(out),
        "--workdir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    orch = json.loads(out.read_text())["orchestration"]
    assert 0 < orch["orchestration_overhead_fraction"] < 1 and orch["pure_train_seconds"] < orch["flow_seconds"]
    runs = orch["task_run_seconds"]
    assert {"stage-1-3L", "stage-2-6L", "stage-3-12L", "card-v1", "gate-v3", "summary", "comparison"} <= set(runs)
    assert orch["prefect_server_start_seconds_excluded"] > 0 and orch["mlflow_store_creation_seconds_excluded"] > 0


COST_CASES = {
    "unknown size": (["--set", "sizes=s,xl"], "unknown size 'xl'"),
    "unknown key": (["--set", "sizez=s"], "unknown key 'sizez'"),
    "repeats not a number": (["--set", "repeats=two"], "repeats 'two' is not a positive whole number"),
}


@pytest.mark.parametrize("case", COST_CASES)
def test_cost_preset_mistakes_exit_2_with_one_line(case, tmp_path, capsys, monkeypatch):
    from flows.cli.main import main

    args, message = COST_CASES[case]
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--preset", "cost", "--out", str(tmp_path / "c.json"), "--workdir", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.strip().count("\n") == 0 and message in err, err
    assert not (tmp_path / "c.json").exists()


@pytest.mark.integration
def test_the_cost_preset_puts_registration_beside_writing_the_same_bytes_once(prefect_harness, tmp_path):
    from bench.overhead.cost import run

    run(["xs"], tmp_path / "w", tmp_path / "c.json", repeats=1, log=lambda *_: None)
    (row,) = json.loads((tmp_path / "c.json").read_text())["sizes"]
    assert row["size"] == "xs" and row["params"] > 0
    weights_and_moments = row["params"] * 4 * 3  # fp32 weights + AdamW's two moments, in safetensors
    assert weights_and_moments <= row["safetensors_bytes"] < weights_and_moments + 100_000
    for key in ("floor_seconds", "registration_seconds", "parent_load_seconds", "gate_seconds"):
        assert 0 < row[key] < row["flow_seconds"], key
    assert row["registration_over_floor"] == pytest.approx(row["registration_seconds"] / row["floor_seconds"])
