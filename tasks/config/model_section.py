"""The ``model`` section (any family's config but ``n_layers`` and ``vocab_size``, told apart by ``arch``),
``stages.0.init`` and stage 1's resolved model and tokenizer.

    model: {d_model: 128, ...}                       the byte GPT (arch: gpt, the default)
    model: {arch: llama, n_kv_heads: 2, ...}         transformers' LlamaForCausalLM (qwen3, qwen2: theirs)
    stages: [{n_layers: 12, steps: 0, init: {from_pretrained: DIR}}, ...]   stage 1 imports a local HF directory

A tokenized family's vocabulary size is never written by hand: it is the tokenizer's (``tokenizer.train.
vocab_size``, the size of ``tokenizer.path``'s vocabulary, 256 bytes by default) or, for an import, the
directory's own. The files read here (a tokenizer.json, an imported config.json) are read only to size
the model; their contents are checked again, by sha256, where they are used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, create_model

from models.data import tokenizer as tokenizers
from models.data.tokenizer import TokenizerConfig, TokenizerError
from models.families.llama import UnsupportedHFConfig
from models.families.lookup import CONFIGS, FAMILIES, ModelConfig, config_tag, family_of
from tasks.store import hf_dir

PER_STAGE = ("n_layers", "vocab_size")  # each stage sets its depth; the tokenizer sets the vocabulary


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _section(config: type[BaseModel]) -> type[BaseModel]:
    """``model`` for a config class: its fields, defaults and bounds, but those a stage or the tokenizer sets."""
    fields = {name: (f.annotation, f) for name, f in config.model_fields.items() if name not in PER_STAGE}
    return create_model(f"{config.__name__}Section", __base__=Strict, **fields)


SECTIONS = {config: _section(config) for config in CONFIGS}
ArchConfig = Annotated[
    Union[tuple(Annotated[section, Tag(config.__name__)] for config, section in SECTIONS.items())],  # noqa: UP007
    Discriminator(
        config_tag,
        custom_error_type="unknown_arch",
        custom_error_message=f"unknown model.arch: known architectures are {', '.join(FAMILIES)}",
    ),
]


def default_section() -> BaseModel:
    """The byte GPT's defaults: the demo's model."""
    return SECTIONS[FAMILIES["gpt"].config]()


class InitConfig(Strict):
    """``stages.0.init``: start from weights a user already has instead of a fresh initialisation."""

    from_pretrained: str = Field(min_length=1)  # a local Hugging Face model directory (safetensors only)


def _vocab_of(tokenizer: TokenizerConfig) -> int:
    if tokenizer.train is not None:
        return tokenizer.train.vocab_size
    if tokenizer.path is not None:
        return tokenizers.vocab_size(tokenizers.load(tokenizer.path))
    return tokenizers.BYTE_ALPHABET


def _tokenized() -> str:
    return ", ".join(name for name, f in FAMILIES.items() if f.fixed_vocab is None)


def first_model(
    model: BaseModel, n_layers: int, tokenizer: TokenizerConfig, init: InitConfig | None
) -> tuple[ModelConfig, TokenizerConfig]:
    """Stage 1's model config and the pipeline's tokenizer (an import brings its own). ValueError: one line."""
    family = family_of(model)
    try:
        if init is not None:
            return _imported(model, n_layers, tokenizer, init)
        if family.fixed_vocab is None:
            return family.config(n_layers=n_layers, vocab_size=_vocab_of(tokenizer), **model.model_dump()), tokenizer
        if tokenizer.kind != "bytes":
            raise ValueError(
                f"model.arch {family.name} reads bytes: tokenizer.train/path need a tokenized arch ({_tokenized()})"
            )
        return family.config(n_layers=n_layers, **model.model_dump()), tokenizer
    except (TokenizerError, UnsupportedHFConfig, hf_dir.ImportRefused) as e:
        raise ValueError(str(e)) from None


def _importer(model_type) -> str:
    """The family that imports a config.json's ``model_type``."""
    known = {f.hf_model_type: name for name, f in FAMILIES.items() if f.hf_model_type}
    if model_type not in known:
        raise UnsupportedHFConfig(f"model_type {model_type!r} is not supported (supported: {', '.join(known)})")
    return known[model_type]


def _imported(
    model: BaseModel, n_layers: int, tokenizer: TokenizerConfig, init: InitConfig
) -> tuple[ModelConfig, TokenizerConfig]:
    """The directory's architecture; fields the user set in ``model`` must agree with it."""
    if family_of(model).hf_model_type is None:
        importers = ", ".join(name for name, f in FAMILIES.items() if f.hf_model_type)
        raise ValueError(f"init.from_pretrained imports a Hugging Face model: set model.arch to one of {importers}")
    directory = str(Path(init.from_pretrained).resolve())
    hf = hf_dir.inspect(directory)
    cfg = FAMILIES[_importer(hf.get("model_type"))].from_hf(hf, context=model.context)
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
