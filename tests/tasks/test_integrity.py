"""Fail-closed integrity: a registered version whose directory was changed in the artifact store (its pyfunc
code, config, a tokenizer file, the weights, or a file added) is refused, in one line, by every path that
loads it: the parent of a stage (and a resume's registered inputs), --from-version, generate, eval, the gate,
the verifying pyfunc loader and `staged serve`. Real MLflow store and artifacts, nothing mocked."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from repo import REPO_ROOT

from flows.cli.main import main
from models.data import tokenizer as tokenizers
from models.families.gpt import GPT
from tasks.config import GateConfig, load_config
from tasks.registry import (
    Registry,
    add_pyfunc,
    download_with_optimizer,
    get_version,
    load_model,
    load_pyfunc,
    register,
    resolve,
)
from tasks.store import IntegrityError, save_model, save_optimizer
from tests.versions import stage1_tags, stage_params

pytestmark = pytest.mark.integration
ROOT = REPO_ROOT
SMOKE = str(ROOT / "configs" / "smoke.yaml")
URI = "models:/staged-smoke/1"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An embedded registry with version 1 = stage 1 of smoke.yaml (untrained) as the pipeline registers it:
    weights, config, optimizer moments, the pyfunc files, and a tokenizer file as a Hugging Face model has."""
    workdir = tmp_path_factory.mktemp("integrity")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        spec = load_config(SMOKE).stage_specs()[0]
        out = workdir / "model"
        sha = save_model(GPT(spec.model), out)
        tags = stage1_tags(sha, "k1", optimizer_sha256=save_optimizer({}, out))
        (out / "tokenizer.json").write_text(tokenizers.byte_tokenizer().to_str())
        add_pyfunc(out, spec.model)
        params = stage_params(spec)
        registry = Registry.resolve(workdir)
        register(registry, spec.model_name, spec.experiment, model_dir=out, tags=tags, params=params, metrics={})
    return workdir


def _artifact(workdir: Path, name: str) -> Path:
    (path,) = [p for p in (workdir / "mlartifacts").rglob(name) if "/model/" in str(p)]
    return path


def _cli(capsys, *args: str) -> tuple[int, list[str]]:
    capsys.readouterr()  # what the in-process loads printed before
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err.strip().splitlines()


def _every_load_path_refuses(workdir: Path, capsys, what: str) -> None:
    registry = Registry.resolve(workdir)
    mv, ref = resolve(registry, URI), get_version(registry.client(), "staged-smoke", "1")
    refused = [
        lambda: load_model(registry, mv),  # generate, eval and the gate load through it
        lambda: download_with_optimizer(registry, ref, Path(tempfile.mkdtemp())),  # a stage's parent, on resume too
        lambda: load_pyfunc(registry, URI),  # the verifying pyfunc loader (staged serve's)
    ]
    for load in refused:
        with pytest.raises(IntegrityError, match=what):
            load()
    w = ["--workdir", str(workdir)]
    for args in (["generate", URI, *w], ["eval", URI, *w], ["serve", URI, *w, "--port", "1"]):
        code, err = _cli(capsys, *args)
        assert code == 2 and len(err) == 1 and what in err[0] and "refusing" in err[0], (args, err)
    code, err = _cli(capsys, "run", SMOKE, *w, "--from-version", "1")
    assert code == 2 and len(err) == 1 and "refusing a parent whose files do not verify" in err[0], err


TAMPERS = {
    "pyfunc_model.py": lambda p: p.write_text(p.read_text() + "\nimport os  # the attacker's line\n"),
    "config.json": lambda p: p.write_text(p.read_text().replace('"n_heads": 2', '"n_heads": 1')),
    "tokenizer.json": lambda p: p.write_text(p.read_text().replace('"<0x', '"<0y', 1) + " "),
    "model.safetensors": lambda p: p.write_bytes(p.read_bytes()[:-4] + b"\0\0\0\0"),
}


@pytest.mark.parametrize("name", TAMPERS)
def test_a_tampered_file_is_refused_by_every_load_path(store, capsys, monkeypatch, name):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = _artifact(store, name)
    original = path.read_bytes()
    TAMPERS[name](path)
    assert path.read_bytes() != original
    try:
        _every_load_path_refuses(store, capsys, f"{name} does not match its sha256")
    finally:
        path.write_bytes(original)
    load_model(Registry.resolve(store), resolve(Registry.resolve(store), URI))  # restored: it loads again


def test_an_added_code_file_is_refused(store, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    extra = _artifact(store, "pyfunc_model.py").parent / "code" / "models" / "sitecustomize.py"
    extra.write_text("import os\n")
    try:
        _every_load_path_refuses(store, capsys, "code/models/sitecustomize.py is not in its manifest")
    finally:
        extra.unlink()


def test_a_version_without_its_manifest_tag_is_refused(store, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = Registry.resolve(store).client()
    digest = client.get_model_version("staged-smoke", "1").tags["manifest_sha256"]
    client.delete_model_version_tag("staged-smoke", "1", "manifest_sha256")
    try:
        _every_load_path_refuses(store, capsys, "no manifest sha256 is registered")
    finally:
        client.set_model_version_tag("staged-smoke", "1", "manifest_sha256", digest)


def test_the_gate_refuses_a_tampered_candidate(store, prefect_harness, monkeypatch):
    from tasks.gate import run_gate

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    registry = Registry.resolve(store)
    ref, config = get_version(registry.client(), "staged-smoke", "1"), load_config(SMOKE)
    path = _artifact(store, "config.json")
    original = path.read_bytes()
    path.write_text(original.decode().replace('"n_heads": 2', '"n_heads": 1'))
    try:
        with pytest.raises(IntegrityError, match="config.json does not match"):
            run_gate(ref, registry, GateConfig(eval_batches=1, batch_size=2), config.data, 0, str(store / "cache"))
    finally:
        path.write_bytes(original)
    assert "champion" not in registry.client().get_registered_model("staged-smoke").aliases
