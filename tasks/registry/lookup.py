"""Finding and loading registered versions by ``models:/`` URI, for people and for the gate.

Every failure a user can cause (a malformed URI, a model, version or alias that does not exist,
a workdir with no store) is a :class:`UseError` with a one-line message; a version whose files do not
match its manifest is an IntegrityError (tasks/store/manifest.py), one line too.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from tokenizers import Tokenizer
from torch import nn

from models.errors import UserError
from models.families.lookup import load_dir
from tasks.registry.client import ModelRef, Registry
from tasks.registry.fetch import fetch
from tasks.registry.schema import versions_filter
from tasks.store import IntegrityError, load_tokenizer, redact

_URI = re.compile(
    r"^models:/(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(?:/(?P<version>\d+|latest)|@(?P<alias>[A-Za-z0-9_-]+))$"
)


class UseError(UserError, ValueError):
    """A bad URI or a missing model, version or alias; the message is one line."""


def parse_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME/VERSION``, ``models:/NAME/latest`` or ``models:/NAME@ALIAS`` -> (name, version, alias)."""
    m = _URI.match(uri)
    if not m:
        raise UseError(
            f"bad model URI {uri!r}: expected models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS"
        )
    return m["name"], m["version"], m["alias"]


def open_registry(workdir: str | Path) -> Registry:
    """The registry ``staged run`` used; an embedded one must already exist (reading never creates a database)."""
    registry = Registry.resolve(workdir)
    if registry.embedded:
        db = Path(registry.tracking_uri.removeprefix("sqlite:///"))
        if not db.is_file():
            raise UseError(
                f"no MLflow store at {db} (run `staged run` with this --workdir, or set MLFLOW_TRACKING_URI)"
            )
    return registry


def _one_line(e: MlflowException) -> str:
    return redact((e.message or str(e)).strip().splitlines()[0])


def registered_model(registry: Registry, name: str):
    client = registry.client()
    try:
        found = client.search_registered_models(f"name = '{name}'")
    except MlflowException as e:
        raise UseError(f"cannot reach the registry at {redact(registry.tracking_uri)}: {_one_line(e)}") from None
    if not found:
        raise UseError(f"no registered model named {name!r} in {redact(registry.tracking_uri)}")
    return client.get_registered_model(name)


def resolve(registry: Registry, uri: str) -> ModelVersion:
    """The model version a ``models:/`` URI names."""
    name, version, alias = parse_uri(uri)
    model = registered_model(registry, name)
    client = registry.client()
    try:
        if alias is not None:
            if alias not in model.aliases:
                known = ", ".join(sorted(model.aliases)) or "none"
                raise UseError(f"model {name!r} has no alias {alias!r} (aliases: {known})")
            return client.get_model_version_by_alias(name, alias)
        if version == "latest":
            versions = client.search_model_versions(versions_filter(name))
            if not versions:
                raise UseError(f"model {name!r} has no versions")
            return max(versions, key=lambda v: int(v.version))
        return client.get_model_version(name, version)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise UseError(f"model {name!r} has no version {version}") from None
        raise UseError(f"{uri}: {_one_line(e)}") from None


def version_ref(mv: ModelVersion) -> ModelRef:
    """A stage version as the loaders see it; a version without stage tags cannot be verified: refused."""
    try:
        return ModelRef.of(mv)
    except ValueError as e:
        raise IntegrityError(f"{e}; refusing to load it") from None


def load_version(registry: Registry, ref: ModelRef) -> tuple[nn.Module, Tokenizer]:
    """The project's own loader: download the version's directory, verify it against its manifest, rebuild the
    model (any family, eval mode) and its tokenizer (the byte vocabulary for the byte GPT)."""
    with tempfile.TemporaryDirectory(prefix="staged-use-") as tmp:
        local, _ = fetch(registry, ref, Path(tmp))  # every file checked against the version's manifest
        return load_dir(local), load_tokenizer(local)


def load_model(registry: Registry, mv: ModelVersion) -> nn.Module:
    """:func:`load_version`'s model alone."""
    return load_version(registry, version_ref(mv))[0]


def versions(registry: Registry, name: str) -> tuple[list[ModelVersion], dict[str, list[str]]]:
    """All versions of ``name`` (oldest first) and each version's aliases."""
    model = registered_model(registry, name)
    found = sorted(registry.client().search_model_versions(versions_filter(name)), key=lambda v: int(v.version))
    aliases: dict[str, list[str]] = {}
    for alias, version in sorted(model.aliases.items()):
        aliases.setdefault(str(version), []).append(alias)
    return found, aliases
