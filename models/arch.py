"""The architecture adapter: everything the loop, growth and the stores need to know about a model family,
in one place. Two families: the byte GPT (models/gpt.py, ours) and the Llama family (models/llama.py,
``transformers``' Llama and Qwen3).

                      byte GPT                          Llama / Qwen3
    config            GPTConfig                         LlamaFamilyConfig(arch=llama|qwen3)
    block prefix      blocks.<i>.                       model.layers.<i>.
    residual writers  attn.proj, mlp.proj (w + b)       self_attn.o_proj, mlp.down_proj (no biases)
    logits            model(idx)                        model(input_ids=idx).logits
    gates (masked)    Block.gate buffer                 forward hooks on self_attn and mlp

The GPT's path through these functions is the exact sequence of operations it always ran (same
calls, same order), so its weights stay bitwise what they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import llama
from models.gpt import GPT, GPTConfig
from models.llama import TIED_HEAD, LlamaFamilyConfig

ModelConfig = GPTConfig | LlamaFamilyConfig
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Layout:
    """Where a family keeps its blocks in a state dict, and what depth growth must keep equal."""

    block_prefix: str  # block i's parameters are "<prefix><i>.<suffix>"
    residual_writers: tuple[str, ...]  # suffixes that write a block's output to the residual stream
    shape_fields: tuple[str, ...]  # config fields depth growth copies unchanged


GPT_LAYOUT = Layout(
    "blocks.",
    ("attn.proj.weight", "attn.proj.bias", "mlp.proj.weight", "mlp.proj.bias"),
    ("d_model", "n_heads", "d_ff", "context"),
)
LLAMA_LAYOUT = Layout(
    "model.layers.",
    ("self_attn.o_proj.weight", "mlp.down_proj.weight"),
    tuple(f for f in LlamaFamilyConfig.model_fields if f not in ("arch", "n_layers")),
)


def is_gpt(cfg_or_model: ModelConfig | nn.Module) -> bool:
    return isinstance(cfg_or_model, (GPTConfig, GPT))


def layout(cfg: ModelConfig) -> Layout:
    return GPT_LAYOUT if is_gpt(cfg) else LLAMA_LAYOUT


def family(cfg: ModelConfig) -> str:
    """``gpt``, ``llama`` or ``qwen3``: what the config builds."""
    return "gpt" if is_gpt(cfg) else cfg.arch


def vocab_size(cfg: ModelConfig) -> int:
    return 256 if is_gpt(cfg) else cfg.vocab_size


def build(cfg: ModelConfig) -> nn.Module:
    """A fresh model (initialised from the caller's torch RNG); ``model.cfg`` is ``cfg``."""
    return GPT(cfg) if is_gpt(cfg) else llama.build(cfg)


def logits(net: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """idx (B, T) token ids -> logits (B, T, V); ``net`` may be a DistributedDataParallel wrapper."""
    inner = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
    if is_gpt(inner):
        return net(idx)
    return net(input_ids=idx, use_cache=False).logits


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of logits (B, T, V) against targets (B, T), softmax in >= float32."""
    logits = logits.reshape(-1, logits.size(-1))  # bf16 under autocast: take the softmax in at least float32
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets.reshape(-1))


def blocks(model: nn.Module) -> nn.ModuleList:
    return model.blocks if is_gpt(model) else llama.layers(model)


def num_params(model: nn.Module) -> int:
    """Distinct parameters (a tied head counts once)."""
    return sum(p.numel() for p in model.parameters())


def weights(model: nn.Module) -> StateDict:
    """The model's state dict as growth and the stores see it: a tied head is not a second tensor."""
    state = model.state_dict()
    if not is_gpt(model) and model.cfg.tie_embeddings:
        state.pop(TIED_HEAD, None)
    return state


def load_weights(model: nn.Module, state: StateDict) -> None:
    """Load ``state`` strictly (every key, nothing extra); a tied head follows the embeddings."""
    if is_gpt(model) or not model.cfg.tie_embeddings:
        model.load_state_dict(state, strict=True)
        return
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {TIED_HEAD}:
        raise RuntimeError(f"state does not fit the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    model.tie_weights()


def set_gate(model: nn.Module, j: int, value: float) -> None:
    """Masked growth: block j's residual writes are scaled by ``value``."""
    if is_gpt(model):
        model.blocks[j].gate.fill_(value)
    else:
        llama.set_gate(model, j, value)


def fold_gates(model: nn.Module) -> None:
    """Move every gate into the weights; the model is then plain (a no-op without gates below 1)."""
    if is_gpt(model):
        for block in model.blocks:
            block.fold_gate()
    else:
        llama.fold_gates(model)
