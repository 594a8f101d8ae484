"""Model artifacts on disk: ``model.safetensors`` + ``config.json`` + ``optimizer.safetensors``.

The optimizer file holds the AdamW moments by parameter name (models/optim.py), for stages that
transfer optimizer state across growth. Nothing is ever pickled. A registered version's directory is
verified as a whole (tasks/store/manifest.py) before these functions read it."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.gpt import GPT, GPTConfig
from tasks.store.manifest import IntegrityError, sha256_file

WEIGHTS, CONFIG, OPTIMIZER = "model.safetensors", "config.json", "optimizer.safetensors"


def save_model(model: GPT, directory: Path) -> str:
    """Write weights and config into ``directory``; return the sha256 of the weights file."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, directory / WEIGHTS)
    (directory / CONFIG).write_text(model.cfg.model_dump_json(indent=2) + "\n")
    return sha256_file(directory / WEIGHTS)


class WeightsMismatch(IntegrityError):
    """A weights or optimizer file whose sha256 is not the registered one."""


def load_state(directory: Path, expected_sha256: str | None) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """Read a saved model, refusing weights whose sha256 differs from ``expected_sha256``."""
    weights = directory / WEIGHTS
    if expected_sha256 is not None:
        actual = sha256_file(weights)
        if actual != expected_sha256:
            raise WeightsMismatch(
                f"{weights}: sha256 {actual[:12]}… does not match the registered {expected_sha256[:12]}…"
            )
    cfg = GPTConfig.model_validate_json((directory / CONFIG).read_text())
    return cfg, load_file(weights)


def save_optimizer(moments: dict[str, torch.Tensor], directory: Path) -> str:
    """Write the AdamW moments (models.optim layout) into ``directory``; return the file's sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in moments.items()}, directory / OPTIMIZER)
    return sha256_file(directory / OPTIMIZER)


def load_optimizer(directory: Path, expected_sha256: str | None) -> dict[str, torch.Tensor] | None:
    """The saved moments, or None for an artifact without them (registered before they were saved)."""
    path = directory / OPTIMIZER
    if not path.is_file():
        return None
    if expected_sha256 is not None and (actual := sha256_file(path)) != expected_sha256:
        raise WeightsMismatch(f"{path}: sha256 {actual[:12]}… does not match the registered {expected_sha256[:12]}…")
    return load_file(path)
