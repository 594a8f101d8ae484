"""The model families, looked up by name: the one place that lists them.

    family_of(cfg) / family_of(model)    the Family (family.py) of a config's ``arch``, or a model's ``.cfg``
    ModelConfig                          any family's config, a pydantic union told apart by ``arch``
    read_config(directory)               the config a version directory was saved with

A new family is one module in models/families/ that defines its Family object, and one entry in ``FAMILIES``; a
new transformers decoder is one class in models/families/decoders.py (``DECODERS``), and this list takes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Discriminator, Tag, TypeAdapter
from torch import nn

from models.errors import UserError
from models.families.decoders import DECODERS
from models.families.family import Family, unwrap
from models.families.gpt import BYTE_GPT

FAMILIES: dict[str, Family] = {f.name: f for f in (BYTE_GPT, *DECODERS)}


def _arch(value: Any) -> str:
    return value.get("arch", "gpt") if isinstance(value, dict) else getattr(value, "arch", "gpt")


def config_tag(value: Any) -> str | None:
    """The name of the config class of the family a value's ``arch`` names (pydantic's discriminator)."""
    family = FAMILIES.get(_arch(value))
    return family.config.__name__ if family else None


CONFIGS = tuple(dict.fromkeys(f.config for f in FAMILIES.values()))  # the config classes, each once
ModelConfig = Annotated[
    Union[tuple(Annotated[c, Tag(c.__name__)] for c in CONFIGS)],  # noqa: UP007 (a union built from the list)
    Discriminator(
        config_tag,
        custom_error_type="unknown_arch",
        custom_error_message=f"unknown model.arch: known architectures are {', '.join(FAMILIES)}",
    ),
]
_MODEL_CONFIG = TypeAdapter(ModelConfig)
CONFIG_FILES = ("staged.json", "config.json")  # a decoder's (beside transformers' config.json), the byte GPT's


class UnknownFamily(UserError, ValueError):
    """An ``arch`` that names no family; one line."""


def family_of(x: Any) -> Family:
    """The family of a config (its ``arch``), a model (its ``.cfg``) or a wrapped model (DDP's ``.module``)."""
    if isinstance(x, nn.Module):
        x = unwrap(x).cfg
    arch = _arch(x)
    if arch not in FAMILIES:
        raise UnknownFamily(f"unknown model.arch {arch!r}: known architectures are {', '.join(FAMILIES)}")
    return FAMILIES[arch]


def parse_config(data: dict[str, Any] | str) -> ModelConfig:
    """A family's config from its JSON (a dict or text)."""
    value = json.loads(data) if isinstance(data, str) else data
    return _MODEL_CONFIG.validate_python(value)


def read_config(directory: Path):
    """The project config a version directory holds (models/families/family.py ``save``)."""
    for name in CONFIG_FILES:
        if (Path(directory) / name).is_file():
            return parse_config((Path(directory) / name).read_text())
    raise FileNotFoundError(f"{directory} holds none of {', '.join(CONFIG_FILES)}")


def load_dir(directory: Path) -> nn.Module:
    """The model a version directory holds (any family), in eval mode; the caller verified the directory."""
    return family_of(read_config(directory)).load(Path(directory))
