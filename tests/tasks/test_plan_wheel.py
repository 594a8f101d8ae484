"""`staged plan` from an installed wheel, outside the checkout: the law is package data, not a path into a
checkout (issue 28: it used to read docs/llama-budgets.json and stopped with "no such file" after `pip install .`).

A wheel is built from a copy of the sources, installed with --no-deps into a fresh venv in a temporary
directory, and run from a directory outside the checkout; its dependencies come from the shared venv's
site-packages on PYTHONPATH (where the project's own editable .pth is not processed), never the checkout."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from repo import REPO_ROOT

pytestmark = pytest.mark.slow

SOURCES = ["models", "tasks", "flows", "bench", "deploy", "pyproject.toml", "README.md"]


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    for name in SOURCES:
        copy = shutil.copytree if (REPO_ROOT / name).is_dir() else shutil.copy
        copy(
            REPO_ROOT / name,
            src / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}),
        )
    run = lambda *a, **kw: subprocess.run(a, check=True, capture_output=True, text=True, **kw)  # noqa: E731
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        ".",
        "-w",
        str(root / "dist"),
        cwd=src,
    )
    (wheel,) = (root / "dist").glob("staged_training-*.whl")
    run(sys.executable, "-m", "venv", str(root / "V"))
    run(str(root / "V" / "bin" / "pip"), "install", "--no-deps", "--no-index", str(wheel))
    shutil.rmtree(src)  # nothing of the sources is left but the installed wheel
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "PYTHONPATH": os.pathsep.join(site.getsitepackages())
    }
    return root, env


def _plan(staged, *args) -> subprocess.CompletedProcess:
    root, env = staged
    cwd = root / "elsewhere"
    cwd.mkdir(exist_ok=True)
    return subprocess.run(
        [str(root / "V" / "bin" / "staged"), "plan", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_the_installed_command_is_the_wheels(staged):
    root, env = staged
    out = subprocess.run(
        [str(root / "V" / "bin" / "python"), "-c", "import tasks.plan.planner as p; print(p.__file__)"],
        cwd=root, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.startswith(str(root / "V")) and str(REPO_ROOT) not in out


def test_plan_from_the_wheel_at_a_measured_point_outside_the_hull_and_with_a_smaller_model(staged):
    at = _plan(staged, "--size", "2L", "--tokens", "2654198")  # 177.8 tokens/param: measured
    assert at.returncode == 0, at.stderr
    assert "the measured point fair-cpu/177.8" in at.stdout and "saves 2% [95% 0% to 4%]" in at.stdout
    small = _plan(staged, "--size", "2L", "--tokens", "778200")  # 52.13: the smaller model wins
    assert small.returncode == 0 and "a smaller model is better at this budget: small-1" in small.stdout
    out = _plan(staged, "--size", "2L", "--tokens", str(20 * 14_928))  # never measured
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "outside the measured points" in out.stderr and "Traceback" not in out.stderr
