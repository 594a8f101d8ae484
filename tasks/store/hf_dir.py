"""Hugging Face model directories: what a Llama-family version's directory holds, and importing one.

    config.json, generation_config.json, model.safetensors   model.save_pretrained (transformers)
    tokenizer.json, tokenizer_config.json                    PreTrainedTokenizerFast.save_pretrained
    staged.json                                              the project's LlamaFamilyConfig (training context)

``AutoModelForCausalLM.from_pretrained(dir)`` and ``AutoTokenizer.from_pretrained(dir)`` load such a
directory offline. ``tokenizer.json`` is rewritten with the tokenizer's canonical serialization after
save_pretrained (which adds an empty post-processor template), so that its sha256 is the tokenizer's
identity (models/tokenizer.py). Importing reads safetensors only: a directory whose weights are pickle
files (``*.bin``, ``*.pt``, ...) is refused, never unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from models import tokenizer as tokenizers
from models.llama import LlamaFamilyConfig

WEIGHTS, HF_CONFIG, STAGED_CONFIG = "model.safetensors", "config.json", "staged.json"
SHARD_INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class ImportRefused(ValueError):
    """A directory that cannot be imported (no safetensors, pickle only, no config); one line."""


def save(model: torch.nn.Module, directory: Path, tok: Tokenizer | None, max_shard_bytes: int = 5 * 10**9) -> None:
    """Write ``model`` (a transformers Llama-family model with ``.cfg``) and its tokenizer as a HF directory,
    its weights sharded with an index above ``max_shard_bytes``."""
    from transformers import GenerationConfig, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    tok = tok or tokenizers.byte_tokenizer()
    eos = tokenizers.eos_id(tok)
    # eos only: a pad_token_id in config.json would become the embedding's padding_idx (a row that never trains)
    model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id = None, eos, None
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=eos)  # generate() pads with eos
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the stage's own progress bar is the one to watch
    try:
        model.save_pretrained(directory, max_shard_size=max_shard_bytes)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    special = {"eos_token": tokenizers.EOT, "pad_token": tokenizers.EOT} if eos is not None else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model.cfg.context, **special)
    fast.save_pretrained(directory)
    (directory / tokenizers.TOKENIZER_FILE).write_text(tok.to_str())
    (directory / STAGED_CONFIG).write_text(model.cfg.model_dump_json(indent=2) + "\n")


def is_hf(directory: Path) -> bool:
    """A version directory of the Llama family (the byte GPT's has no staged.json)."""
    return (directory / STAGED_CONFIG).is_file()


def config(directory: Path) -> LlamaFamilyConfig:
    return LlamaFamilyConfig.model_validate_json((directory / STAGED_CONFIG).read_text())


# ---- importing a local Hugging Face directory -------------------------------------------------------


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
