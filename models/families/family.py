"""The model-family interface: one object per family owns everything that differs between families, as
torchtitan's ModelSpec does. Every other module asks the family of a config or model; nobody tests a type.

    fam = family_of(cfg)                    # models/families/lookup.py: by ``cfg.arch`` (or a model's ``.cfg``)
    fam.tiny(n_layers=3)                    # a config for tests and quick checks
    model = fam.build(cfg)                  # a fresh model; ``model.cfg`` is ``cfg``
    logits = fam.logits(model, idx)         # (B, T) token ids -> (B, T, V)
    fam.blocks(model)                       # the repeated blocks: growth's layer map, FSDP and checkpoint units
    fam.weights(model), fam.load_weights(model, state)     # the state dict growth and the stores see
    fam.set_gate(model, j, g), fam.fold_gates(model)        # masked growth
    fam.widen_config / widen / widen_moments                # width growth (function preserving; the family's
                                                            # rules, models/families/width.py's driver)
    fam.num_params(cfg), fam.footprint(cfg, batch), fam.flops_per_token(cfg)   # sizes, nothing built
    fam.save(model, directory, tokenizer), fam.load(directory)                 # a version's directory
    fam.from_state(cfg, state)              # the model holding a state dict: built on meta, tensors assigned

The families (models/families/lookup.py): the byte GPT (models/families/gpt.py, ours) and the transformers decoders
(``DecoderFamily`` in models/families/llama.py; its members Llama, Qwen3, Qwen2, Mistral in models/families/decoders.py,
Mixtral in models/families/mixtral.py).
A model's family is named by its config's ``arch``; a config class may serve several families.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel

from models.families import width

StateDict = dict[str, torch.Tensor]
FLOAT32 = 4  # bytes
WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"  # one file, or Hugging Face's shards + index


@dataclass(frozen=True)
class Footprint:
    """Memory of one training step, from the config alone: no tensor is allocated, so a config that would not fit
    is refused in microseconds instead of after minutes of allocation (or an out-of-memory kill)."""

    params: int
    weights: int  # bytes
    grads: int
    optimizer: int  # AdamW's two moments
    activations: int  # kept for backward, one step

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations

    @classmethod
    def adamw(cls, params: int, activations: int) -> Footprint:
        """Float32 throughout (an upper bound under bf16 autocast): weights, gradients and two AdamW moments are
        4 + 4 + 8 bytes per parameter; ``activations``: the elements autograd keeps for one step's backward."""
        p = FLOAT32 * params
        return cls(params=params, weights=p, grads=p, optimizer=2 * p, activations=FLOAT32 * activations)


@dataclass(frozen=True)
class Layout:
    """Where a family keeps its blocks in a state dict, and what depth growth must keep equal."""

    block_prefix: str  # block i's parameters are "<prefix><i>.<suffix>"
    residual_writers: tuple[str, ...]  # suffixes that write a block's output to the residual stream
    shape_fields: tuple[str, ...]  # config fields depth growth copies unchanged
    embeddings: tuple[str, ...] = ()  # name prefixes of the input embeddings (growth.freeze.embeddings); the rest
    # outside the blocks is the head (final norm, output projection: growth.freeze.head)


class Family:
    """One model family. Subclasses set the class attributes and implement what has no default here."""

    name: str  # the config's ``arch``
    config: type[BaseModel]  # its config class (frozen pydantic; fields n_layers, d_model, context, ...)
    config_file: str  # the file of a version's directory that holds ``config`` as JSON
    layout: Layout
    fixed_vocab: int | None = None  # a vocabulary of the code (the byte GPT's 256 bytes): no tokenizer to train
    hf_model_type: str | None = None  # the Hugging Face ``model_type`` that ``stages.0.init`` can import
    requires: tuple[str, ...] = ()  # packages its models need beyond torch (a pyfunc version pins them)
    moe: str | None = None  # the family ``growth.operator: upcycle`` turns this dense family into (Llama -> mixtral)

    # ---- the model ------------------------------------------------------------------------------

    def build(self, cfg) -> nn.Module:
        """A fresh model (initialised from the caller's torch RNG), with ``model.cfg = cfg``."""
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The repeated transformer blocks, in order."""
        raise NotImplementedError

    def logits(self, net: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, V); ``net`` is the model or a wrapper of it (DDP, FSDP2)."""
        raise NotImplementedError

    def next_logits(self, model: nn.Module, idx: torch.Tensor, cache=None) -> tuple[torch.Tensor, object]:
        """Logits (V,) of the token after ``idx`` (1, T), and what the next call passes as ``cache`` (None at
        first). This default recomputes the model's last ``context`` tokens every time; a family with a
        key-value cache feeds only the newest token."""
        return self.logits(model, idx[:, -model.cfg.context :])[0, -1], None

    def vocab_size(self, cfg) -> int:
        return self.fixed_vocab if self.fixed_vocab is not None else cfg.vocab_size

    def tiny(self, **fields):
        """A config small enough for a test or a quick check (``fields`` override its values)."""
        raise NotImplementedError

    def describe(self, cfg) -> str:
        """One sentence on the architecture for people (model cards), without the vocabulary."""
        raise NotImplementedError

    # ---- weights as growth and the stores see them -------------------------------------------------

    def weights(self, model: nn.Module) -> StateDict:
        return model.state_dict()

    def load_weights(self, model: nn.Module, state: StateDict, assign: bool = False) -> None:
        """Load ``state`` strictly: every key, nothing extra (``assign``: its tensors become the parameters)."""
        model.load_state_dict(state, strict=True, assign=assign)

    def from_state(self, cfg, state: StateDict) -> nn.Module:
        """The model of ``cfg`` holding ``state``'s tensors, which it takes over (a tensor two keys share is
        copied). Built on the meta device, so nothing is allocated or initialised twice; the tensors are then
        assigned (``load_state_dict(assign=True)``), cast to the model's dtypes; the buffers a model computes
        rather than saves are the family's (:meth:`init_buffers`)."""
        with torch.device("meta"):
            model = self.build(cfg)
        dtypes, seen, owned = {k: t.dtype for k, t in model.state_dict().items()}, set(), {}
        for key, t in state.items():
            t = t.to(dtypes[key]) if key in dtypes and t.is_floating_point() else t
            owned[key] = t.clone() if t.untyped_storage().data_ptr() in seen else t
            seen.add(t.untyped_storage().data_ptr())
        self.load_weights(model, owned, assign=True)
        self.init_buffers(model)
        if left := [n for n, t in chain(model.named_parameters(), model.named_buffers()) if t.is_meta]:
            raise RuntimeError(f"{self.name}: {', '.join(left[:3])} left on the meta device (init_buffers)")
        return model

    def init_buffers(self, model: nn.Module) -> None:
        """Give a model built on the meta device the buffers it computes rather than saves (gates, RoPE tables)."""

    # ---- masked growth: a block's residual writes scaled by a gate --------------------------------

    def set_gate(self, model: nn.Module, j: int, value: float) -> None:
        raise NotImplementedError

    def fold_gates(self, model: nn.Module) -> None:
        """Move every gate into the weights; the model is then plain (a no-op without gates below 1)."""
        raise NotImplementedError

    # ---- width growth: the family's rules, one driver (models/families/width.py) -------------------

    def widen_config(self, cfg):
        """The child config of a width stage."""
        raise NotImplementedError

    def check_width(self, parent, child) -> None:
        """A WidthError (one line) unless ``child`` is ``widen_config(parent)``."""
        raise NotImplementedError

    def widen_tensor(self, key: str, t: torch.Tensor, moments: bool, noise_std: float, gen) -> torch.Tensor:
        """One parent tensor -> the child's (a weight, or an AdamW moment when ``moments``)."""
        raise NotImplementedError

    def gradient_ratio(self, key: str) -> float:
        """The child's gradient of a copied entry over the parent's (what the moments are scaled by)."""
        raise NotImplementedError

    def widen(self, state: StateDict, parent, child, noise: float = 0.0, seed: int = 0) -> StateDict:
        return width.widen(self, state, parent, child, noise=noise, seed=seed)

    def widen_moments(self, moments: StateDict, parent, child, power: int) -> StateDict:
        return width.widen_moments(self, moments, parent, child, power)

    # ---- sizes, from the config alone --------------------------------------------------------------

    def num_params(self, cfg) -> int:
        """Exactly the built model's distinct parameters (a tied head counts once)."""
        raise NotImplementedError

    def matmul_params(self, cfg) -> int:
        """The weights that take part in matrix products: blocks and head (a tied head is still a matmul)."""
        raise NotImplementedError

    def attention_width(self, cfg) -> int:
        """Width of the queries: what attention's own matmuls scale with."""
        return cfg.d_model

    def flops_per_token(self, cfg) -> float:
        """Training FLOPs per token, one convention for every family: forward + backward = 3 x forward
        (Kaplan et al. 2020): 6 x the matmul weights, plus attention's own QK^T and weighted sum over a
        causal mask, 6 x n_layers x context x query width."""
        return 6.0 * self.matmul_params(cfg) + 6.0 * cfg.n_layers * cfg.context * self.attention_width(cfg)

    def footprint(self, cfg, batch: int) -> Footprint:
        """Weights, gradients, AdamW moments and activations of one step of ``batch`` sequences."""
        raise NotImplementedError

    # ---- a version's directory -----------------------------------------------------------------------

    def save(self, model: nn.Module, directory: Path, tokenizer, max_shard_bytes: int) -> None:
        """Write weights, config (and tokenizer, for tokenized families) into ``directory``."""
        raise NotImplementedError

    def unfold(self, cfg, state: StateDict) -> StateDict:
        """Weights read from a directory :meth:`save` wrote -> the weights this family trains (a decoder's directory
        holds depth-muP's branch multiplier folded into its residual writers); by default, as they are."""
        return state

    def read_config(self, directory: Path):
        return self.config.model_validate_json((Path(directory) / self.config_file).read_text())

    def load(self, directory: Path) -> nn.Module:
        """The model saved in ``directory`` by :meth:`save`, in eval mode. The caller verified the directory."""
        cfg = self.read_config(directory)
        return self.from_state(cfg, self.unfold(cfg, read_weights(Path(directory)))).eval()

    # ---- units of sharding and of activation checkpointing ---------------------------------------------

    def fsdp_units(self, model: nn.Module) -> list[nn.Module]:
        """FSDP2's all-gather units: one per block (the root, sharded last, holds the rest)."""
        return list(self.blocks(model))

    def checkpoint_units(self, model: nn.Module) -> list[nn.Module]:
        """Activation checkpointing recomputes each of these in the backward pass."""
        return list(self.blocks(model))


def read_weights(directory: Path) -> StateDict:
    """A directory's safetensors: ``model.safetensors``, or every shard its index lists (Hugging Face's layout)."""
    from safetensors.torch import load_file

    if not (directory / INDEX).is_file():
        return load_file(directory / WEIGHTS)
    state: StateDict = {}
    for name in sorted(set(json.loads((directory / INDEX).read_text())["weight_map"].values())):
        state.update(load_file(directory / name))
    return state


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of logits (B, T, V) against targets (B, T), softmax in >= float32."""
    logits = logits.reshape(-1, logits.size(-1))  # bf16 under autocast: take the softmax in at least float32
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets.reshape(-1))


def num_params(model: nn.Module) -> int:
    """Distinct parameters of a built model (a tied head counts once)."""
    return sum(p.numel() for p in model.parameters())


def unwrap(net: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
