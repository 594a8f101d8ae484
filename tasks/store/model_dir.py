"""Model artifacts on disk: ``model.safetensors`` + ``config.json`` + ``optimizer.safetensors``.

The byte GPT's directory: its weights and its own ``config.json`` (a GPTConfig). A Llama-family model's:
a Hugging Face model directory with its tokenizer (tasks/store/hf_dir.py). :func:`save_model` writes
either, :func:`load_state` and :func:`load_tokenizer` read either: the one way in each direction.
The optimizer file holds the AdamW moments by parameter name (models/optim.py), for stages that
transfer optimizer state across growth. Nothing is ever pickled."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from models import arch
from models import tokenizer as tokenizers
from models.arch import ModelConfig
from models.gpt import GPTConfig
from tasks.store import hf_dir

WEIGHTS, CONFIG, OPTIMIZER = "model.safetensors", "config.json", "optimizer.safetensors"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model(model: nn.Module, directory: Path, tokenizer: Tokenizer | None = None) -> str:
    """Write weights and config (a Llama-family model: a HF directory with ``tokenizer``, default the byte
    vocabulary) into ``directory``; return the sha256 of the weights file."""
    directory.mkdir(parents=True, exist_ok=True)
    if not arch.is_gpt(model):
        hf_dir.save(model, directory, tokenizer)
        return sha256_file(directory / WEIGHTS)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, directory / WEIGHTS)
    (directory / CONFIG).write_text(model.cfg.model_dump_json(indent=2) + "\n")
    return sha256_file(directory / WEIGHTS)


class WeightsMismatch(RuntimeError):
    pass


def load_state(directory: Path, expected_sha256: str | None) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a saved model (either family), refusing weights whose sha256 differs from ``expected_sha256``."""
    weights = directory / WEIGHTS
    if expected_sha256 is not None:
        actual = sha256_file(weights)
        if actual != expected_sha256:
            raise WeightsMismatch(
                f"{weights}: sha256 {actual[:12]}… does not match the registered {expected_sha256[:12]}…"
            )
    cfg = (
        hf_dir.config(directory)
        if hf_dir.is_hf(directory)
        else GPTConfig.model_validate_json((directory / CONFIG).read_text())
    )
    return cfg, load_file(weights)


def load_tokenizer(directory: Path) -> Tokenizer:
    """A version's tokenizer: its tokenizer.json, or the byte vocabulary (the byte GPT's directories have none)."""
    if (directory / tokenizers.TOKENIZER_FILE).is_file():
        return tokenizers.load(directory)
    return tokenizers.byte_tokenizer()


def imported_sha256(directory: str | Path) -> str:
    """sha256 of a HF directory's safetensors (one file: that file's; shards: of their sha256s, in order)."""
    shas = [sha256_file(f) for f in hf_dir.weight_files(Path(directory))]
    return shas[0] if len(shas) == 1 else hashlib.sha256("".join(shas).encode()).hexdigest()


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
