"""Model artifacts on disk: the family's directory (weights + config), ``optimizer.safetensors``, and sha256s.

Which files a model directory holds is its family's (``Family.save``: the byte GPT's ``config.json`` +
``model.safetensors``; a transformers decoder's Hugging Face directory with its tokenizer,
models/families/llama.py).
:func:`save_model` writes any of them, :func:`load_state` and :func:`load_tokenizer` read any of them: the one way
in each direction.
The optimizer file holds the AdamW moments by parameter name (models/train/optim.py), for stages that
transfer optimizer state across growth. Nothing is ever pickled.

Weights above ``SHARD_BYTES`` (Hugging Face's default, 5 GB) are saved as Hugging Face does
(``huggingface_hub.save_torch_state_dict`` for the byte GPT, ``save_pretrained`` for the decoders):
``model-00001-of-0000N.safetensors``... and ``model.safetensors.index.json`` (which tensor is in which
file). The index also records each shard's sha256 (``metadata.sha256``), and the version's weights sha256
is the index's: verifying it and then each shard against it verifies every byte. transformers and
``huggingface_hub.load_torch_model`` read such a directory as they read a single file. A registered
version's directory is verified as a whole (tasks/store/manifest.py) before these functions read it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

import tasks.store.hf_dir as hf_dir
from models.data import tokenizer as tokenizers
from models.families.lookup import ModelConfig, family_of, read_config
from tasks.store.manifest import IntegrityError, sha256_file

WEIGHTS, CONFIG, OPTIMIZER = "model.safetensors", "config.json", "optimizer.safetensors"
INDEX = "model.safetensors.index.json"  # sharded weights (above SHARD_BYTES)
SHARD_BYTES = 5 * 10**9  # huggingface_hub's and transformers' default max_shard_size ("5GB")


def _hashed(path: Path, hashes: dict[str, str]) -> str:
    """sha256 of a file just written (one pass over its bytes), noted in ``hashes`` under its name."""
    hashes[path.name] = sha256_file(path)
    return hashes[path.name]


def _weights_sha256(directory: Path, hashes: dict[str, str]) -> str:
    """The single weights file's sha256, or (sharded) the index's once it records every shard's sha256."""
    if not (directory / INDEX).is_file():
        return _hashed(directory / WEIGHTS, hashes)
    index = json.loads((directory / INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    index.setdefault("metadata", {})["sha256"] = {name: _hashed(directory / name, hashes) for name in shards}
    (directory / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return _hashed(directory / INDEX, hashes)


def save_model(
    model: nn.Module,
    directory: Path,
    tokenizer: Tokenizer | None = None,
    max_shard_bytes: int = SHARD_BYTES,
    hashes: dict[str, str] | None = None,
) -> str:
    """Write the model's directory (its family's files; a tokenized family's with ``tokenizer``, default the byte
    vocabulary) into ``directory``; return the sha256 of the weights file (or of the shards' index).
    ``hashes`` collects the sha256 of each weights file written (for the manifest: tasks/store/manifest.py)."""
    directory.mkdir(parents=True, exist_ok=True)
    family_of(model).save(model, directory, tokenizer, max_shard_bytes)
    return _weights_sha256(directory, {} if hashes is None else hashes)


class WeightsMismatch(IntegrityError):
    """A weights or optimizer file whose sha256 is not the registered one."""


def _verified(path: Path, expected_sha256: str | None, verified: dict[str, str] | None = None) -> Path:
    """``path`` once its sha256 is ``expected_sha256``; ``verified``: sha256s already checked against the
    version's manifest by ``verify_manifest`` (by relative path), so the bytes are not hashed twice."""
    if expected_sha256 is None or (verified or {}).get(path.name) == expected_sha256:
        return path
    if (actual := sha256_file(path)) != expected_sha256:
        raise WeightsMismatch(f"{path}: sha256 {actual[:12]}… does not match the registered {expected_sha256[:12]}…")
    return path


def load_state(
    directory: Path, expected_sha256: str | None, verified: dict[str, str] | None = None
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a saved model (any family), refusing weights whose sha256 differs from ``expected_sha256``
    (sharded: the index's, then every shard against the index). ``verified``: as ``verify_manifest`` returned it."""
    cfg = read_config(directory)
    if not (directory / INDEX).is_file():
        return cfg, family_of(cfg).unfold(cfg, load_file(_verified(directory / WEIGHTS, expected_sha256, verified)))
    index = json.loads(_verified(directory / INDEX, expected_sha256, verified).read_text())
    state: dict[str, torch.Tensor] = {}
    for name, sha in index["metadata"]["sha256"].items():
        state.update(load_file(_verified(directory / name, sha if expected_sha256 is not None else None, verified)))
    if state.keys() != index["weight_map"].keys():
        raise WeightsMismatch(f"{directory / INDEX}: its shards do not hold exactly the tensors it lists")
    return cfg, family_of(cfg).unfold(cfg, state)  # the weights as trained (depth-muP's multiplier divided out)


def load_tokenizer(directory: Path) -> Tokenizer:
    """A version's tokenizer: its tokenizer.json, or the byte vocabulary (the byte GPT's directories have none)."""
    if (directory / tokenizers.TOKENIZER_FILE).is_file():
        return tokenizers.load(directory)
    return tokenizers.byte_tokenizer()


def imported_sha256(directory: str | Path) -> str:
    """sha256 of a HF directory's safetensors (one file: that file's; shards: of their sha256s, in order)."""
    shas = [sha256_file(f) for f in hf_dir.weight_files(Path(directory))]
    return shas[0] if len(shas) == 1 else hashlib.sha256("".join(shas).encode()).hexdigest()


def save_optimizer(moments: dict[str, torch.Tensor], directory: Path, hashes: dict[str, str] | None = None) -> str:
    """Write the AdamW moments (models.train.optim layout) into ``directory``; return the file's sha256 (also noted
    in ``hashes``)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in moments.items()}, directory / OPTIMIZER)
    return _hashed(directory / OPTIMIZER, {} if hashes is None else hashes)


def load_optimizer(
    directory: Path, expected_sha256: str | None, verified: dict[str, str] | None = None
) -> dict[str, torch.Tensor] | None:
    """The saved moments, or None for an artifact without them (registered before they were saved)."""
    path = directory / OPTIMIZER
    if not path.is_file():
        return None
    return load_file(_verified(path, expected_sha256, verified))
