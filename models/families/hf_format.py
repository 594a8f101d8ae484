"""The Hugging Face model directory of a transformers decoder: writing one, and reading a config.json.

    config.json, generation_config.json, model.safetensors   model.save_pretrained (transformers)
    tokenizer.json, tokenizer_config.json                    PreTrainedTokenizerFast.save_pretrained
    staged.json                                              the project's LlamaFamilyConfig (training context)

``AutoModelForCausalLM.from_pretrained(dir)`` and ``AutoTokenizer.from_pretrained(dir)`` load such a
directory offline. ``tokenizer.json`` is rewritten with the tokenizer's canonical serialization after
save_pretrained (which adds an empty post-processor template), so that its sha256 is the tokenizer's
identity (models/data/tokenizer.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from tokenizers import Tokenizer

from models.data import tokenizer as tokenizers
from models.errors import UserError
from models.families.family import Family

STAGED_CONFIG = "staged.json"  # the project's config beside transformers' config.json


class UnsupportedHFConfig(UserError, ValueError):
    """A Hugging Face config.json this project cannot train or grow; one line."""


def save(model: torch.nn.Module, directory: Path, tok: Tokenizer | None, max_shard_bytes: int) -> None:
    """Write ``model`` (a transformers decoder with ``.cfg``) and its tokenizer as a HF directory, its weights
    sharded with an index above ``max_shard_bytes``."""
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


def config_from_hf(family: Family, hf: dict[str, Any], context: int) -> BaseModel:
    """A ``config.json`` (as a dict) of ``family``'s model_type -> its config, trained at ``context``."""
    rope = hf.get("rope_parameters") or {"rope_type": "default", "rope_theta": hf.get("rope_theta", 10000.0)}
    if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
        raise UnsupportedHFConfig(f"rope type {rope.get('rope_type')!r} is not supported (only the default RoPE)")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag) and not family.hf_extra.get(flag, True):
            raise UnsupportedHFConfig(f"{flag}: true is not supported for {family.name} (its layers have no biases)")
    if hf.get("use_sliding_window"):
        raise UnsupportedHFConfig("use_sliding_window: true is not supported (full attention only)")
    if hf.get("hidden_act", "silu") != "silu":
        raise UnsupportedHFConfig(f"hidden_act {hf['hidden_act']!r} is not supported (SwiGLU with silu only)")
    try:
        return family.config(
            arch=family.name,
            n_layers=hf["num_hidden_layers"],
            d_model=hf["hidden_size"],
            n_heads=hf["num_attention_heads"],
            n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            d_ff=hf["intermediate_size"],
            head_dim=hf.get("head_dim"),
            context=context,
            max_position_embeddings=hf["max_position_embeddings"],
            rope_theta=rope.get("rope_theta", 10000.0),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            vocab_size=hf["vocab_size"],
        )
    except KeyError as e:
        raise UnsupportedHFConfig(f"config.json has no {e.args[0]!r}") from None
