"""Importing a local Hugging Face model directory (``stages.0.init.from_pretrained``): safetensors only.

What a decoder version's directory holds is its family's (``DecoderFamily.save``, models/families/llama.py).
Importing reads safetensors only: a directory whose weights are pickle files (``*.bin``, ``*.pt``, ...) is
refused, never unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from models.errors import UserError

WEIGHTS, HF_CONFIG = "model.safetensors", "config.json"
SHARD_INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class ImportRefused(UserError, ValueError):
    """A directory that cannot be imported (no safetensors, pickle only, no config); one line."""


def weight_files(directory: Path) -> list[Path]:
    if (directory / WEIGHTS).is_file():
        return [directory / WEIGHTS]
    if (directory / SHARD_INDEX).is_file():
        try:
            shards = sorted(set(json.loads((directory / SHARD_INDEX).read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as e:
            raise ImportRefused(f"{directory}: {SHARD_INDEX} is not a safetensors index ({e})") from None
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise ImportRefused(f"{directory}: shard {missing[0]} named in {SHARD_INDEX} is missing")
        return [directory / s for s in shards]
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ImportRefused(
            f"{directory} has only pickle weights ({', '.join(pickles[:3])}): convert them to safetensors; "
            "pickle files are never loaded"
        )
    raise ImportRefused(f"{directory} has no {WEIGHTS} (safetensors weights are required)")


def inspect(directory: str | Path) -> dict[str, Any]:
    """The directory's config.json, after checking that it has safetensors weights; ImportRefused if not."""
    path = Path(directory)
    if not path.is_dir():
        raise ImportRefused(f"init.from_pretrained {str(directory)!r} is not a directory")
    weight_files(path)
    try:
        hf = json.loads((path / HF_CONFIG).read_text())
    except FileNotFoundError:
        raise ImportRefused(f"{path} has no {HF_CONFIG}") from None
    except ValueError as e:
        raise ImportRefused(f"{path / HF_CONFIG} is not valid JSON ({e})") from None
    if not isinstance(hf, dict):
        raise ImportRefused(f"{path / HF_CONFIG} does not hold a JSON object")
    return hf


def load_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the directory's safetensors, as float32 (half-precision checkpoints are trained in fp32)."""
    state: dict[str, torch.Tensor] = {}
    for f in weight_files(Path(directory)):
        state.update({k: v.float() if v.is_floating_point() else v for k, v in load_file(f).items()})
    return state
