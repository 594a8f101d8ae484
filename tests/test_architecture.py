"""The layout's rules, checked: import directions and cycles (import-linter, contracts in pyproject.toml),
no MLflow tag named outside tasks/registry/, and files short enough to read in one sitting."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from repo import REPO_ROOT

ROOT = REPO_ROOT
PACKAGES = ("models", "tasks", "flows", "bench", "deploy")


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).parent / "lint-imports"
    return subprocess.run([str(lint), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300)


def _sources(root: Path = ROOT) -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (root / pkg).rglob("*.py"))


def test_every_import_contract_is_kept():
    out = _lint_imports(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


@pytest.mark.parametrize(
    "file, line, broken",
    [
        ("models/families/gpt.py", "import tasks.config", "models/ is pure PyTorch"),
        ("models/data/bytes.py", "import mlflow", "models/ is pure PyTorch"),
        ("tasks/store/storage.py", "import mlflow", "Storage and the stage driver never talk to MLflow"),
        ("tasks/registry/schema.py", "import prefect", "know nothing of Prefect"),
        ("tasks/store/checkpoint.py", "import tasks.stage", "Rooms of tasks/"),
        ("tasks/registry/schema.py", "import tasks.registry.client", "No import cycles"),
        ("tasks/stage.py", "import flows.staged", "Layers: command line"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path, file, line, broken):
    """The same contracts on a copy of the code with one bad import added: import-linter must object."""
    for src in _sources():
        dst = tmp_path / src.relative_to(ROOT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / file
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    out = _lint_imports(tmp_path)
    assert out.returncode != 0 and broken in out.stdout.replace("\n", " "), out.stdout[-3000:]


def _tag_names_used(tree: ast.AST) -> list[str]:
    """Literal tag keys read from ``<x>.tags`` or written with MLflow's tag setters, and search filters on tags."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "tags":
            if isinstance(node.slice, ast.Constant):
                found.append(repr(node.slice.value))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            func, args = node.func, node.args
            reads_tags = func.attr == "get" and isinstance(func.value, ast.Attribute) and func.value.attr == "tags"
            writes = func.attr in ("set_tag", "set_model_version_tag", "delete_tag", "delete_model_version_tag")
            if (reads_tags or writes) and any(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args):
                found.append(ast.unparse(node))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "tags." in node.value:
            found.append(repr(node.value))
    return found


def test_no_file_outside_the_registry_names_an_mlflow_tag():
    offenders = {}
    for path in _sources():
        if path.is_relative_to(ROOT / "tasks" / "registry"):
            continue
        if used := _tag_names_used(ast.parse(path.read_text())):
            offenders[str(path.relative_to(ROOT))] = used
    assert offenders == {}


def test_the_tag_check_sees_literal_tag_names():
    code = (
        "v.tags['stage_key']\nmv.tags.get('gate_decision')\nc.set_model_version_tag(n, v, 'x', y)\nf = \"tags.a = 'b'\""
    )
    assert len(_tag_names_used(ast.parse(code))) == 4


MAX_LINES = 500  # one concept per file, readable in one sitting (nanoGPT's model.py: 330; torchtitan's trainer: ~1,100)
MAX_MODULES = 12  # per folder of models/ and bench/: more and a folder is two concerns


def test_files_stay_short_enough_to_read_in_one_sitting():
    long = {str(p.relative_to(ROOT)): n for p in _sources() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_room_of_models_or_bench_is_crowded():
    rooms = [d for pkg in ("models", "bench") for d in [ROOT / pkg, *(ROOT / pkg).rglob("*")] if d.is_dir()]
    crowded = {}
    for room in rooms:
        modules = [p for p in room.glob("*.py") if p.name != "__init__.py"]
        if len(modules) > MAX_MODULES:
            crowded[str(room.relative_to(ROOT))] = len(modules)
    assert crowded == {}
