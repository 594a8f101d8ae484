"""A PipelineConfig from YAML and ``--set dotted.key=value`` overrides, with one-line messages.

load_config("configs/demo.yaml", ["stages.1.steps=0"]) -> PipelineConfig   (ConfigError on a mistake)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from models.errors import UserError
from tasks.config.schema import PipelineConfig, format_validation_error


class ConfigError(UserError, ValueError):
    """A user mistake in a config file or override; the message is one line."""


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: the value is not valid YAML") from None
    return key.strip().split("."), value


def apply_override(tree: dict, item: str) -> None:
    """Set ``a.b.0.c=value`` in a nested dict/list tree; the value is parsed as YAML (3, 1e-3, true, null)."""
    path, value = _parse_override(item)
    node: Any = tree
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {item!r}: {'.'.join(path[:i])} has no item {part!r} (it has {len(node)})")
            part = int(part)
        elif isinstance(node, dict):
            if not last and part not in node:
                node[part] = {}
        else:
            raise ConfigError(f"override {item!r}: {'.'.join(path[:i])} is not a mapping or a list")
        if last:
            node[part] = value
        else:
            node = node[part]


def read_yaml(path: str | Path) -> dict:
    """A YAML file's top-level mapping; ConfigError for a missing or empty file (comments only, too: running the
    defaults by accident is worse than a word), bad YAML or another top-level type."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    try:
        tree = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}") from None
    if tree is None:
        raise ConfigError(f"config file is empty: {str(path)!r} (configs/demo.yaml spells out the defaults)")
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return tree


def load_config(path: str | Path | None, overrides: list[str] = ()) -> PipelineConfig:
    """Read YAML (or start from the defaults when ``path`` is None), apply overrides, validate."""
    tree: Any = read_yaml(path) if path is not None else {}
    if overrides and "stages" not in tree:
        tree["stages"] = [s.model_dump() for s in PipelineConfig.model_fields["stages"].default]
    for item in overrides:
        apply_override(tree, item)
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(f"invalid config: {format_validation_error(e)}") from None


def resolve_config(config: PipelineConfig | str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """The flow's ``config`` parameter as a PipelineConfig: as given, or loaded from a YAML path (None: the
    defaults) with ``overrides``."""
    return config if isinstance(config, PipelineConfig) else load_config(config, overrides or [])
