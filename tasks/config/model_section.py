"""The ``model`` section (a union on ``arch``), ``stages.0.init`` and stage 1's resolved model and tokenizer.

    model: {d_model: 128, ...}                       the byte GPT (arch: gpt, the default)
    model: {arch: llama, n_kv_heads: 2, ...}         transformers' LlamaForCausalLM (qwen3: Qwen3ForCausalLM)
    stages: [{n_layers: 12, steps: 0, init: {from_pretrained: DIR}}, ...]   stage 1 imports a local HF directory

A Llama-family model's vocabulary size is never written by hand: it is the tokenizer's (``tokenizer.train.
vocab_size``, the size of ``tokenizer.path``'s vocabulary, 256 bytes by default) or, for an import, the
directory's own. The files read here (a tokenizer.json, an imported config.json) are read only to size
the model; their contents are checked again, by sha256, where they are used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from models import tokenizer as tokenizers
from models.arch import ModelConfig
from models.gpt import GPTConfig
from models.llama import LlamaFamilyConfig, UnsupportedHFConfig, from_hf
from models.tokenizer import TokenizerConfig, TokenizerError
from tasks.store import hf_dir


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GPTArch(Strict):
    """``model`` for the byte GPT: stage 1's widths; each stage sets n_layers, a ``width`` stage doubles them."""

    arch: Literal["gpt"] = "gpt"
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 512
    context: int = 128
    dropout: float = 0.0


class LlamaArch(Strict):
    """``model`` for the Llama family (LlamaFamilyConfig's fields but n_layers and vocab_size)."""

    arch: Literal["llama", "qwen3"]
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int = 2  # grouped-query attention: 2 query heads per key-value head
    d_ff: int = 384
    head_dim: int | None = None
    context: int = 128
    max_position_embeddings: int | None = None  # None: the context
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False


def _arch_tag(value: Any) -> str:
    arch = value.get("arch", "gpt") if isinstance(value, dict) else getattr(value, "arch", "gpt")
    return "llama" if arch == "qwen3" else str(arch)


ArchConfig = Annotated[
    Annotated[GPTArch, Tag("gpt")] | Annotated[LlamaArch, Tag("llama")],
    Discriminator(
        _arch_tag,
        custom_error_type="unknown_arch",
        custom_error_message="unknown model.arch: known architectures are gpt, llama and qwen3",
    ),
]


class InitConfig(Strict):
    """``stages.0.init``: start from weights a user already has instead of a fresh initialisation."""

    from_pretrained: str = Field(min_length=1)  # a local Hugging Face model directory (safetensors only)


def _vocab_of(tokenizer: TokenizerConfig) -> int:
    if tokenizer.train is not None:
        return tokenizer.train.vocab_size
    if tokenizer.path is not None:
        return tokenizers.vocab_size(tokenizers.load(tokenizer.path))
    return tokenizers.BYTE_ALPHABET


def first_model(
    model: GPTArch | LlamaArch, n_layers: int, tokenizer: TokenizerConfig, init: InitConfig | None
) -> tuple[ModelConfig, TokenizerConfig]:
    """Stage 1's model config and the pipeline's tokenizer (an import brings its own). ValueError: one line."""
    try:
        if isinstance(model, GPTArch):
            if init is not None:
                raise ValueError("init.from_pretrained imports a Llama-family model: set model.arch: llama or qwen3")
            if tokenizer.kind != "bytes":
                raise ValueError("the byte GPT (model.arch: gpt) reads bytes: tokenizer.train/path need arch llama")
            return GPTConfig(n_layers=n_layers, **model.model_dump(exclude={"arch"})), tokenizer
        if init is None:
            fields = model.model_dump()
            return LlamaFamilyConfig(n_layers=n_layers, vocab_size=_vocab_of(tokenizer), **fields), tokenizer
        return _imported(model, n_layers, tokenizer, init)
    except (TokenizerError, UnsupportedHFConfig, hf_dir.ImportRefused) as e:
        raise ValueError(str(e)) from None


def _imported(
    model: LlamaArch, n_layers: int, tokenizer: TokenizerConfig, init: InitConfig
) -> tuple[LlamaFamilyConfig, TokenizerConfig]:
    """The directory's architecture; fields the user set in ``model`` must agree with it."""
    directory = str(Path(init.from_pretrained).resolve())
    cfg = from_hf(hf_dir.inspect(directory), context=model.context)
    where = f"init.from_pretrained {init.from_pretrained!r}"
    if cfg.arch != model.arch:
        raise ValueError(f"{where} holds a {cfg.arch} model, but model.arch is {model.arch}")
    if n_layers != cfg.n_layers:
        raise ValueError(f"{where} has {cfg.n_layers} layers, but stages.0.n_layers is {n_layers}")
    clashes = [
        f"model.{f} {getattr(model, f)} (the directory's: {getattr(cfg, f)})"
        for f in model.model_fields_set - {"arch", "context"}
        if getattr(model, f) != getattr(cfg, f)
    ]
    if clashes:
        raise ValueError(f"{where}: {', '.join(clashes)}")
    if tokenizer.train is not None:
        raise ValueError(f"{where} brings its tokenizer: drop tokenizer.train (or give tokenizer.path)")
    tokenizer = tokenizer if tokenizer.path is not None else TokenizerConfig(path=directory)
    if (n := _vocab_of(tokenizer)) > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {n} tokens, more than the imported model's vocab_size {cfg.vocab_size}")
    return cfg, tokenizer
