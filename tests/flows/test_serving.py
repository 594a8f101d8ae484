"""MLflow serving: every version loads through mlflow.pyfunc from models:/ URIs, gives the project
loader's logits, and nothing in the logged model is a pickle."""

import os
import pickletools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from tasks.registry import Registry, load_model, load_pyfunc, resolve

pytestmark = pytest.mark.integration
_PICKLE_HEADERS = [bytes([0x80, p]) for p in range(2, 6)]  # PROTO opcode + protocol 2..5


def _is_pickle(path: Path) -> bool:
    """A file that parses as a pickle stream, or names itself one."""
    data = path.read_bytes()
    if path.suffix in {".pkl", ".pickle"}:
        return True
    if data[:2] in _PICKLE_HEADERS:
        try:
            for _ in pickletools.genops(data):
                pass
            return True
        except Exception:
            return False
    return False


@contextmanager
def mlflow_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-global tracking and registry URIs at ``uri`` for a block, then restore them.

    Only for APIs that read the globals (``mlflow.pyfunc.load_model("models:/…")``); set_tracking_uri
    also writes the MLFLOW_*_URI environment variables, so those are restored too. Not thread-safe.
    """
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved = tracking_utils._tracking_uri, registry_utils._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        registry_utils._registry_uri = saved[1]
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_pyfunc_from_registry_alias_equals_the_project_loader(gated_runs):
    workdir, _ = gated_runs
    registry = Registry.resolve(workdir)
    ids = np.array([list(b"def main():\n    return 0\n")], dtype=np.int64)
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    for uri in ("models:/staged-smoke@champion", "models:/staged-smoke/1", "models:/staged-smoke@stage-2"):
        ours = load_model(registry, resolve(registry, uri))
        with mlflow_uri(registry.tracking_uri):
            pyfunc = mlflow.pyfunc.load_model(uri)  # the plain MLflow API a person would call
        with torch.no_grad():
            expected = ours(torch.from_numpy(ids)).numpy()
        got = pyfunc.predict(ids)
        assert got.shape == (1, ids.shape[1], 256) and np.array_equal(got, expected), uri
    assert os.environ.get("MLFLOW_TRACKING_URI") == env_before  # the global URI was restored
    meta = load_pyfunc(registry, "models:/staged-smoke@champion").metadata
    spec = meta.signature.inputs.inputs[0]
    assert (spec.type, spec.shape) == (np.dtype("int64"), (-1, -1))
    assert meta.saved_input_example_info["type"] == "ndarray"


def test_versions_keep_plain_files_and_carry_no_pickle(gated_runs, tmp_path):
    workdir, _ = gated_runs
    registry = Registry.resolve(workdir)
    client = registry.client()
    for v in client.search_model_versions("name = 'staged-smoke'"):
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=v.source, dst_path=str(tmp_path / str(v.version)), tracking_uri=registry.tracking_uri
            )
        )
        names = {p.name for p in local.iterdir()}
        assert {
            "model.safetensors",
            "config.json",
            "optimizer.safetensors",
            "MLmodel",
            "pyfunc_model.py",
            "input_example.json",
        } <= names
        mlmodel = (local / "MLmodel").read_text()
        assert "model_code_path" in mlmodel and "python_model.pkl" not in mlmodel
    files = [p for p in (workdir / "mlartifacts").rglob("*") if p.is_file()]
    assert len(files) > 50
    assert [p for p in files if _is_pickle(p)] == []


def test_the_pickle_scan_detects_a_pickle(tmp_path):
    import pickle

    (tmp_path / "x.bin").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    (tmp_path / "y.bin").write_bytes(b"\x80\x04 not really")
    assert _is_pickle(tmp_path / "x.bin") and not _is_pickle(tmp_path / "y.bin")
