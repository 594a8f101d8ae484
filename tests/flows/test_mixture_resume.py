"""configs/mixture-demo.yaml SIGKILLed inside a stage and rerun: the same weights and per-source cursors as an
uninterrupted run (tests/flows/test_resume.py's approach: two CLI subprocesses, one in-process reference)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from repo import REPO_ROOT
from test_resume import OVERRIDES, _env, _kill_inside_a_stage

from flows.staged import staged_training
from tasks.config import load_config
from tasks.registry import Registry

pytestmark = pytest.mark.integration
ROOT = REPO_ROOT
MIX = ROOT / "configs" / "mixture-demo.yaml"


def _versions(workdir: Path) -> list[tuple[str, str, str]]:
    found = Registry.resolve(workdir).client().search_model_versions("name = 'staged-mixture'")
    rows = sorted((int(v.tags["stage"]), v.tags["weights_sha256"], v.tags["data_cursors"]) for v in found)
    return [row[1:] for row in rows]


def test_a_mixture_killed_inside_a_stage_resumes_to_the_uninterrupted_weights_and_cursors(prefect_harness, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        staged_training(load_config(MIX, OVERRIDES), str(tmp_path / "reference"))
    reference = _versions(tmp_path / "reference")
    # 30, 16, 8 steps of 8 sequences: 3/4 code until stage 3 reweighs to 1/4, each from where stage 2 left it
    cursors = [json.loads(c) for _, c in reference]
    assert cursors[0] == {"code": 180, "prose": 60} and cursors[2] == {"code": 276 + 16, "prose": 92 + 48}

    workdir = tmp_path / "work"
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    cmd = [sys.executable, "-m", "flows.cli.main", "run", str(MIX), "--workdir", str(workdir), *sets]
    ckpts = workdir / "checkpoints"
    at_kill = _kill_inside_a_stage(cmd, _env(), lambda: [str(p) for p in ckpts.glob("*/step-*/manifest.json")])
    states = [json.loads((Path(m).parent / "state.json").read_text()) for m in at_kill if Path(m).exists()]
    assert states and all(set(s["cursors"]) == {"code", "prose"} for s in states)  # every cursor checkpointed
    proc = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _versions(workdir) == reference
