"""The MLflow pyfunc flavour of a version, written with models-from-code (no pickle anywhere).

``add_pyfunc(model_dir, cfg)`` turns a saved model directory (its family's files: the byte GPT's, or a
Hugging Face directory of a decoder) into one that is also a valid
MLflow model (MLmodel, the code file tasks/registry/pyfunc_model.py, a copy of the
``models`` package's sources, environment files, signature and input example). The registered
version's source stays that one directory, so tools that read the safetensors directly keep
working, and ``mlflow.pyfunc.load_model("models:/name@alias")`` / ``mlflow models serve`` work too.
Those two execute the version's ``pyfunc_model.py`` as the artifact store holds it; the project's own
doors verify the whole directory first: ``load_pyfunc`` here and ``staged serve`` (flows/cli/use.py).

``mlflow.pyfunc.save_model`` is used rather than ``log_model``: it writes files only, so no
LoggedModel, no fluent run and no process-global tracking URI are involved; the stage's run then
uploads the directory through its explicit client.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

import models
from models.families.lookup import ModelConfig, family_of
from tasks.registry.client import Registry
from tasks.registry.fetch import fetch
from tasks.registry.lookup import resolve, version_ref

CODE = Path(__file__).with_name("pyfunc_model.py")
EXAMPLE = b"def main():\n    "
_PINNED = ("torch", "safetensors", "pydantic", "numpy", "mlflow")


def requirements(extra: tuple[str, ...] = ()) -> list[str]:
    """Exact versions of what the wrapper imports, ``extra``: what the family's models need (explicit: MLflow's
    inference would load the model in a subprocess)."""
    reqs = []
    for name in _PINNED + extra:
        try:
            reqs.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(name)
    return reqs


def signature(vocab_size: int = 256):
    """int64 token ids (batch, T) -> float32 logits (batch, T, vocab); for the byte GPT ids are bytes, vocab 256."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype("int64"), (-1, -1))]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, -1, vocab_size))]),
    )


def input_example(context: int, ids: list[int] | None = None) -> np.ndarray:
    return np.array([(list(EXAMPLE) if ids is None else ids)[:context]], dtype=np.int64)


def add_pyfunc(model_dir: Path, cfg: ModelConfig, example: list[int] | None = None) -> None:
    """Make ``model_dir`` (a saved model of ``cfg``) also an MLflow pyfunc model directory.

    ``example``: token ids of the input example (default: EXAMPLE's bytes, the byte vocabulary's ids)."""
    import mlflow.pyfunc

    family = family_of(cfg)
    with tempfile.TemporaryDirectory(prefix="staged-pyfunc-") as tmp:
        code = Path(tmp) / "code" / "models"  # sources only: no __pycache__ bytecode in the artifact
        code.mkdir(parents=True)
        root = Path(models.__file__).parent
        for src in root.rglob("*.py"):  # every room of the package, each module at its own path
            (code / src.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, code / src.relative_to(root))
        out = Path(tmp) / "pyfunc"
        with _quiet("mlflow.pyfunc", "mlflow.models"):
            mlflow.pyfunc.save_model(
                str(out),
                python_model=str(CODE),
                code_paths=[str(code)],
                signature=signature(family.vocab_size(cfg)),
                input_example=input_example(cfg.context, example),
                pip_requirements=requirements(family.requires),
            )
        for item in out.iterdir():
            if (model_dir / item.name).exists():
                raise FileExistsError(f"pyfunc file {item.name} would overwrite {model_dir / item.name}")
            shutil.move(str(item), model_dir / item.name)


@contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def verified_copy(registry: Registry, model_uri: str, dst: Path) -> Path:
    """The version a ``models:/`` URI names, downloaded into ``dst`` and verified against its manifest tag:
    a directory whose ``pyfunc_model.py`` and ``code/`` may be executed. IntegrityError (one line) otherwise."""
    return fetch(registry, version_ref(resolve(registry, model_uri)), dst, copy=True).path  # MLflow's loader writes


def load_pyfunc(registry: Registry, model_uri: str):
    """``mlflow.pyfunc.load_model`` of a verified local copy of ``model_uri`` (MLflow's own loader, given a
    ``models:/`` URI, would execute the artifact store's ``pyfunc_model.py`` unchecked)."""
    import mlflow.pyfunc

    tmp = Path(tempfile.mkdtemp(prefix="staged-pyfunc-"))
    try:
        model = mlflow.pyfunc.load_model(str(verified_copy(registry, model_uri, tmp)))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    weakref.finalize(model, shutil.rmtree, tmp, True)  # the copy lives as long as the model
    return model
