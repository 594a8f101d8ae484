"""A small decoder-only transformer over bytes, written to be read in one sitting.

Reading order: attention -> MLP -> block -> config -> model -> the family object (what the pipeline asks).
Every parameter of transformer block i lives under the key prefix ``blocks.<i>.``;
embeddings, the final norm and the head live outside ``blocks.`` so that growth
operators (models/growth.py) can treat a model as "a list of blocks plus the rest".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.families import size, width
from models.families.depth_mup import DepthMup, branch_multiplier
from models.families.family import Family, Layout, StateDict, token_loss

VOCAB_SIZE = 256  # bytes: no tokenizer to ship, download or version


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)  # the "out-projection" that writes to the residual stream
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.fc = nn.Linear(d_model, d_ff)
        self.proj = nn.Linear(d_ff, d_model)  # the "down-projection" that writes to the residual stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-LayerNorm block: x + g * m * attn(ln(x)), then x + g * m * mlp(ln(x)).

    The gate ``g`` is 1 except while a masked growth stage ramps a new block in (models/growth.py):
    at g = 0 the block is the identity on the residual stream. It is a non-persistent buffer, so
    state dicts stay plain; :meth:`fold_gate` moves a gate < 1 into the weights before saving.
    ``m`` is depth-muP's branch multiplier (models/families/depth_mup.py), a constant of the config: 1 by default.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.mult = branch_multiplier(cfg.depth_mup, cfg.n_layers)
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.d_ff)
        self.drop = nn.Dropout(cfg.dropout)
        self.register_buffer("gate", torch.ones(()), persistent=False)  # scalar; x * 1.0 is exact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gate if self.mult == 1.0 else self.gate * self.mult
        x = x + g * self.drop(self.attn(self.ln1(x)))  # (B, T, C)
        return x + g * self.drop(self.mlp(self.ln2(x)))  # (B, T, C)

    @torch.no_grad()
    def fold_gate(self) -> None:
        """Scale both residual-writing projections by the gate and reset it to 1: same function, plain weights."""
        g = self.gate.item()
        if g != 1.0:
            for proj in (self.attn.proj, self.mlp.proj):
                proj.weight.mul_(g)
                proj.bias.mul_(g)
            self.gate.fill_(1.0)


class GPTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Literal["gpt"] = (
        "gpt"  # the family (models/families/lookup.py); versions saved before it had none: the default
    )
    n_layers: int = Field(6, ge=1)
    d_model: int = Field(128, ge=1)
    n_heads: int = Field(4, ge=1)
    d_ff: int = Field(512, ge=1)  # 4 x d_model, as in GPT-2
    context: int = Field(128, ge=1)  # bytes of context; also the size of the learned position table
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # small models on plenty of data do not overfit: keep it off
    # residual-branch multipliers 1/sqrt(L) or 1/L on every block (models/families/depth_mup.py), in the small and
    # the grown model alike, so that the LR tuned on the small model transfers to the deep one; none: GPT-2
    depth_mup: DepthMup = "none"

    @model_validator(mode="after")
    def _heads_divide_width(self) -> GPTConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} does not divide d_model={self.d_model}")
        return self


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(VOCAB_SIZE, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, VOCAB_SIZE, bias=False)  # untied: growth stays a pure key map
        self.apply(self._init_weights)
        # GPT-2: scale the residual-writing projections by 1/sqrt(2 * n_layers) so the stream's
        # variance does not grow with depth (under depth-muP the branch multiplier does that).
        for name, p in self.named_parameters():
            if name.endswith(".proj.weight") and cfg.depth_mup == "none":
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: (B, T) byte ids -> logits (B, T, 256)."""
        B, T = idx.shape
        if T > self.cfg.context:
            raise ValueError(f"sequence of {T} bytes exceeds context {self.cfg.context}")
        pos = torch.arange(T, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # (B, T, 256)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return token_loss(self(idx), targets)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class ByteGPT(Family):
    """The byte GPT as a family: its blocks at ``blocks.<i>.``, gates on each block, width growth in
    models/families/width.py, and a version directory of its own (``config.json`` with this config,
    ``model.safetensors``)."""

    name = "gpt"
    config = GPTConfig
    layout = Layout(
        "blocks.",
        ("attn.proj.weight", "attn.proj.bias", "mlp.proj.weight", "mlp.proj.bias"),
        ("d_model", "n_heads", "d_ff", "context"),
        ("tok_emb.", "pos_emb."),
    )
    fixed_vocab = VOCAB_SIZE
    config_file = "config.json"

    def build(self, cfg: GPTConfig) -> GPT:
        return GPT(cfg)

    def tiny(self, **fields) -> GPTConfig:
        return GPTConfig(**{"n_layers": 2, "d_model": 16, "n_heads": 2, "d_ff": 32, "context": 16, **fields})

    def describe(self, cfg: GPTConfig) -> str:
        return (
            f"Byte-level decoder-only transformer (models/families/gpt.py): {cfg.n_layers} layers, "
            f"d_model {cfg.d_model},\n"
            f"{cfg.n_heads} heads, d_ff {cfg.d_ff}, context {cfg.context} bytes"
        )

    def blocks(self, model: GPT) -> nn.ModuleList:
        return model.blocks

    def logits(self, net: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        return net(idx)  # (B, T, 256)

    def init_buffers(self, model: GPT) -> None:
        for block in model.blocks:
            block.gate = torch.ones((), device=block.ln1.weight.device)  # open: the block is plain

    def set_gate(self, model: GPT, j: int, value: float) -> None:
        model.blocks[j].gate.fill_(value)

    def fold_gates(self, model: GPT) -> None:
        for block in model.blocks:
            block.fold_gate()

    def widen_config(self, cfg: GPTConfig) -> GPTConfig:
        return width.widen_config(cfg)

    def widen(self, state: StateDict, parent, child, noise: float = 0.0, seed: int = 0) -> StateDict:
        return width.widen(state, parent, child, noise=noise, seed=seed)

    def widen_moments(self, moments: StateDict, parent, child, power: int) -> StateDict:
        return width.widen_moments(moments, parent, child, power)

    def num_params(self, cfg: GPTConfig) -> int:
        return size.gpt_params(cfg, VOCAB_SIZE)

    def matmul_params(self, cfg: GPTConfig) -> int:
        return size.gpt_matmul_params(cfg, VOCAB_SIZE)

    def footprint(self, cfg: GPTConfig, batch: int) -> size.Footprint:
        return size.gpt_footprint(cfg, batch, VOCAB_SIZE)

    def save(self, model: GPT, directory: Path, tokenizer, max_shard_bytes: int) -> None:
        """``config.json`` + ``model.safetensors`` (sharded as Hugging Face does above ``max_shard_bytes``)."""
        from huggingface_hub import save_torch_state_dict
        from safetensors.torch import save_file

        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        (directory / self.config_file).write_text(model.cfg.model_dump_json(indent=2) + "\n")
        if sum(v.numel() * v.element_size() for v in state.values()) <= max_shard_bytes:
            save_file(state, directory / "model.safetensors")
        else:
            save_torch_state_dict(state, directory, max_shard_size=max_shard_bytes)


BYTE_GPT = ByteGPT()
