"""A small decoder-only transformer over bytes, written to be read in one sitting.

Reading order: attention -> MLP -> block -> config -> model -> the family object (what the pipeline asks: its
width rules, sizes and version directory too).
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

from models.families import width
from models.families.depth_mup import DepthMup, branch_multiplier
from models.families.family import Family, Footprint, Layout, token_loss

VOCAB_SIZE = 256  # bytes: no tokenizer to ship, download or version
_DUP_COLUMNS = ("tok_emb.weight", "pos_emb.weight", "head.weight")  # (N, C) -> (N, 2C) in width growth


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
    """The byte GPT as a family: its blocks at ``blocks.<i>.``, gates on each block, its width rules (the driver:
    models/families/width.py), its sizes, and a version directory of its own (``config.json`` with this config,
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

    # ---- width growth (the driver: models/families/width.py) ------------------------------------------------
    #   embeddings       E (V, C)   -> [E, E]                   (V, 2C)   rows written twice
    #   LayerNorm        g, b (C)   -> [g; g], [b; b]           (2C)      mean/var of [x; x] = those of x
    #   linear layers    W (n, m)   -> [[W, 0], [0, W]]         (2n, 2m)  two copies side by side
    #   qkv              3 x (C, C) -> 3 x block-diagonal        (6C, 2C)  heads h and h + H are twins
    #   final LayerNorm  g, b       -> [g; g] / 2, [b; b] / 2             the head sees [h/2; h/2] ...
    #   head             H (V, C)   -> [H, H]                   (V, 2C)   ... and sums H h/2 + H h/2 = H h
    # Heads double and head_dim stays, so attention scores (and their 1/sqrt(head_dim)) are unchanged. Every
    # gradient halves (each copy of x carries half of dL/dx), except the final LayerNorm's: unchanged.

    def widen_config(self, cfg: GPTConfig) -> GPTConfig:
        """d_model, n_heads and d_ff doubled, the rest kept."""
        return cfg.model_copy(update={"d_model": 2 * cfg.d_model, "n_heads": 2 * cfg.n_heads, "d_ff": 2 * cfg.d_ff})

    def check_width(self, parent: GPTConfig, child: GPTConfig) -> None:
        if child != (expected := self.widen_config(parent)):
            raise width.WidthError(
                "width growth doubles d_model, n_heads and d_ff and keeps the rest, "
                f"but the child has {width.differences(child, expected)}"
            )

    def widen_tensor(
        self, key: str, t: torch.Tensor, moments: bool, noise_std: float, gen: torch.Generator
    ) -> torch.Tensor:
        if key in _DUP_COLUMNS:
            return torch.cat([t, t], dim=1)  # (N, 2C)
        if key.endswith("attn.qkv.bias"):  # [q; k; v] -> [q; q; k; k; v; v]
            return torch.cat([torch.cat([c, c]) for c in t.chunk(3)])  # (6C,)
        if t.dim() == 1:
            out = torch.cat([t, t])  # (2n,)
            return out / 2 if key.startswith("ln_f.") and not moments else out  # the head sums two halves
        if key.endswith("attn.qkv.weight"):  # 3 x (C, C) -> 3 x (2C, 2C) stacked: (6C, 2C)
            return torch.cat([width.linear(c, moments, noise_std, gen) for c in t.chunk(3)])
        return width.linear(t, moments, noise_std, gen)

    def gradient_ratio(self, key: str) -> float:
        return 1.0 if key.startswith("ln_f.") else 0.5

    # ---- sizes, from the config alone ---------------------------------------------------------------------

    def num_params(self, cfg: GPTConfig) -> int:
        """Exactly ``GPT(cfg).num_params()``: embeddings, blocks, final norm and the untied head."""
        C, F, V = cfg.d_model, cfg.d_ff, VOCAB_SIZE
        block = (
            2 * C  # ln1 (weight, bias)
            + C * 3 * C
            + 3 * C  # qkv
            + C * C
            + C  # attention out-projection
            + 2 * C  # ln2
            + C * F
            + F  # fc
            + F * C
            + C  # mlp out-projection
        )
        return V * C + cfg.context * C + cfg.n_layers * block + 2 * C + C * V

    def matmul_params(self, cfg: GPTConfig) -> int:
        d, f = cfg.d_model, cfg.d_ff
        per_block = 3 * d * d + d * d + 2 * d * f  # qkv, out-proj, mlp in and out
        return cfg.n_layers * per_block + d * VOCAB_SIZE  # + the byte head

    def footprint(self, cfg: GPTConfig, batch: int) -> Footprint:
        """Trained with AdamW on ``batch`` sequences of ``cfg.context`` bytes."""
        B, T, C, F, H = batch, cfg.context, cfg.d_model, cfg.d_ff, cfg.n_heads
        per_block = (
            B * T * (10 * C + 2 * F)  # norms' in/out, q k v, attention out, residuals, fc and gelu outputs
            + B * H * T * T  # attention weights, when SDPA takes the math kernel (dropout, some CPUs)
        )
        embeddings = 2 * B * T * C  # token + position sum, final norm
        head = 3 * B * T * VOCAB_SIZE  # logits, their float32 softmax, its gradient
        return Footprint.adamw(self.num_params(cfg), cfg.n_layers * per_block + embeddings + head)

    # ---- a version's directory ---------------------------------------------------------------------------

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
