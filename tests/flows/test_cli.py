"""The `staged` command as a user runs it: a real subprocess (its mistakes mostly in-process, the same main)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from repo import REPO_ROOT

ROOT = REPO_ROOT
SMOKE = ROOT / "configs" / "smoke.yaml"


def staged(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"MLFLOW_TRACKING_URI", "PREFECT_API_URL"}}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli.main", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _bad_yaml(tmp: Path) -> str:
    (tmp / "bad.yaml").write_text("stages:\n  - n_layers: 3\n    steps: [\n")
    return str(tmp / "bad.yaml")


def _a_file(tmp: Path) -> str:
    (tmp / "file").write_text("")
    return str(tmp / "file" / "sub")


CASES = {
    "missing config": (lambda t: ["run", "nope.yaml"], "config file 'nope.yaml' not found"),
    "malformed yaml": (lambda t: ["run", _bad_yaml(t)], "is not valid YAML"),
    "unknown key": (lambda t: ["run", str(SMOKE), "--set", "stages.0.layers=3"], "Extra inputs are not permitted"),
    "wrong type": (lambda t: ["run", str(SMOKE), "--set", "train.lr=fast"], "train.lr: Input should be a valid number"),
    "impossible growth": (
        lambda t: ["run", str(SMOKE), "--set", "stages.2.n_layers=8"],
        "cannot stack 6 layers into 8",
    ),
    "missing data": (
        lambda t: ["run", str(SMOKE), "--set", f"data.source={t}/none"],
        "is neither a file nor a directory",
    ),
    "unwritable workdir": (lambda t: ["run", str(SMOKE), "--workdir", _a_file(t)], "is not writable"),
}


@pytest.mark.parametrize("case", CASES)
def test_user_mistakes_exit_2_with_one_line_and_register_nothing(tmp_path, case, capsys, monkeypatch):
    """The first case as a real process; the others in-process, through the same ``main`` (each process costs
    ~4 s of imports; test_bad_input.py runs its registry and network cases as processes too)."""
    from flows.cli.main import main

    make_args, message = CASES[case]
    args = make_args(tmp_path)
    if "--workdir" not in args:
        args += ["--workdir", str(tmp_path / "work")]
    if case == next(iter(CASES)):
        proc = staged(*args, cwd=tmp_path)
        code, err = proc.returncode, proc.stderr
    else:
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        with pytest.raises(SystemExit) as exit_:
            main(args)
        code, err = exit_.value.code, capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("staged: error:") and message in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "work" / "mlflow.db").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.integration
def test_run_smoke_prints_the_summary_and_keeps_everything_in_the_workdir(tmp_path):
    proc = staged("run", str(SMOKE), "--workdir", "work", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for header in ("stage", "layers", "params", "steps", "val loss", "wall s", "version"):
        assert header in proc.stdout
    assert "staged-smoke-loss.png" in proc.stdout
    assert "gate: version 3 promoted: no champion yet" in proc.stdout  # the gate's decision is reported
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # no mlruns/ or mlflow.db in the cwd
    written = {p.name for p in (tmp_path / "work").iterdir()}
    assert {"mlflow.db", "mlartifacts", "prefect.db", "staged-smoke-loss.png"} <= written
