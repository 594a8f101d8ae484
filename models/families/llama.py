"""The transformers decoders (Llama, Qwen3, Qwen2, ...): one family class, one small config, their width rules,
sizes and Hugging Face directory. No copy of the model code lives here: the field's own library is the dependency.

    LlamaFamilyConfig(arch="llama", n_layers=6, d_model=128, n_heads=4, n_kv_heads=2, d_ff=384, ...)
    class DecoderFamily(Family)                 # here: everything the members share
    Llama, Qwen3, Qwen2: DECODERS               # models/families/decoders.py: a member and its quirks

Every parameter of decoder layer i lives under ``model.layers.<i>.``, the embeddings under
``model.embed_tokens.``, the final RMSNorm under ``model.norm.`` and the head under ``lm_head.`` (absent
from the state dict when the embeddings are tied): growth (models/growth.py) treats the model as "a list of
layers plus the rest", exactly as for the byte GPT's ``blocks.<i>.``. The members differ only inside a
layer (Qwen3: RMSNorms on queries and keys, ``self_attn.{q,k}_norm``; Qwen2: biases on q, k and v), extra
per-layer keys that the generic mapping carries.

Masked growth gates a layer's two residual writes (x + g * attn(...), x + g * mlp(...)) with forward
hooks that scale ``self_attn``'s and ``mlp``'s outputs; ``fold_gates`` moves a gate into
``o_proj``/``down_proj`` (bias-free linear maps in every member, so the fold is exact) and removes the
hooks: a saved model is always a plain transformers model. ``transformers`` is imported only when a model
is built, so the byte GPT's path never pays for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tokenizers import Tokenizer

from models.data import tokenizer as tokenizers
from models.errors import UserError
from models.families import width
from models.families.depth_mup import DepthMup, branch_multiplier, scale_writers
from models.families.family import Family, Footprint, Layout, StateDict

TIED_HEAD = "lm_head.weight"  # dropped from state dicts when the embeddings are tied (as save_pretrained does)
STAGED_CONFIG = "staged.json"  # the project's config beside transformers' config.json
_DUP_COLUMNS = ("model.embed_tokens.weight", "lm_head.weight")  # (V, C) -> (V, 2C) in width growth
_FINAL_NORM = "model.norm.weight"


class UnsupportedHFConfig(UserError, ValueError):
    """A Hugging Face config.json this project cannot train or grow; one line."""


class LlamaFamilyConfig(BaseModel):
    """A transformers decoder's config, in the field names every family's config shares (n_layers, d_model, n_heads,
    d_ff, context)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str  # which decoder: a family in models/families/lookup.py whose config this is (llama, qwen3, qwen2)
    n_layers: int = Field(6, ge=1)  # num_hidden_layers
    d_model: int = Field(128, ge=1)  # hidden_size
    n_heads: int = Field(4, ge=1)  # num_attention_heads
    n_kv_heads: int = Field(2, ge=1)  # num_key_value_heads: grouped-query attention, n_heads / n_kv_heads per group
    d_ff: int = Field(384, ge=1)  # intermediate_size of the SwiGLU MLP (~ 8/3 x d_model in Llama; 3x here)
    head_dim: int | None = Field(None, ge=1)  # None: d_model / n_heads
    context: int = Field(128, ge=1)  # tokens per training sequence
    max_position_embeddings: int | None = Field(None, ge=1)  # what RoPE is set up for; None: the context
    rope_theta: float = Field(10000.0, gt=0)
    rms_norm_eps: float = Field(1e-5, gt=0)
    tie_embeddings: bool = False  # untied by default: growth stays a pure key map; tied works too
    vocab_size: int = Field(256, ge=1)  # set from the tokenizer (tasks/config/schema.py), never by hand
    # residual-branch multipliers 1/sqrt(L) or 1/L (models/families/depth_mup.py), small and grown model alike, so
    # the small model's tuned LR transfers; forward hooks while training, folded into o_proj/down_proj when saved
    depth_mup: DepthMup = "none"

    @model_validator(mode="after")
    def _shapes_agree(self) -> LlamaFamilyConfig:
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} does not divide d_model={self.d_model} (or set head_dim)")
        if self.max_position_embeddings is not None and self.context > self.max_position_embeddings:
            raise ValueError(
                f"context {self.context} is longer than max_position_embeddings {self.max_position_embeddings}"
            )
        return self

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.n_heads


LAYOUT = Layout(
    "model.layers.",
    ("self_attn.o_proj.weight", "mlp.down_proj.weight"),
    tuple(f for f in LlamaFamilyConfig.model_fields if f not in ("arch", "n_layers")),
    ("model.embed_tokens.",),
)


class DecoderFamily(Family):
    """A ``transformers`` causal LM built from a LlamaFamilyConfig. A member (models/families/decoders.py) names
    its classes and the config fields it fixes, and overrides what its layers add (its quirks)."""

    hf_config: str  # the transformers config class, e.g. "LlamaConfig"
    hf_model: str  # the transformers model class, e.g. "LlamaForCausalLM"
    hf_extra: dict[str, Any] = {}  # config fields this member fixes (no sliding window, no biases...)
    quirk = ""  # what its layers add, for people ("q/k norms")
    config = LlamaFamilyConfig
    layout = LAYOUT
    config_file = STAGED_CONFIG
    requires = ("transformers", "tokenizers")

    @property
    def hf_model_type(self) -> str:
        return self.name

    def to_hf(self, cfg: LlamaFamilyConfig, eos_token_id: int | None = None):
        """The transformers config of ``cfg``."""
        import transformers

        return getattr(transformers, self.hf_config)(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.d_model,
            intermediate_size=cfg.d_ff,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.n_kv_heads,
            head_dim=cfg.resolved_head_dim,
            max_position_embeddings=cfg.max_position_embeddings or cfg.context,
            rms_norm_eps=cfg.rms_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
            tie_word_embeddings=cfg.tie_embeddings,
            bos_token_id=None,
            eos_token_id=eos_token_id,
            pad_token_id=eos_token_id,
            **self.hf_extra,
        )

    def from_hf(self, hf: dict[str, Any], context: int) -> LlamaFamilyConfig:
        """A ``config.json`` (as a dict) of this family -> its config, trained at ``context``."""
        rope = hf.get("rope_parameters") or {"rope_type": "default", "rope_theta": hf.get("rope_theta", 10000.0)}
        if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
            raise UnsupportedHFConfig(f"rope type {rope.get('rope_type')!r} is not supported (only the default RoPE)")
        for flag in ("attention_bias", "mlp_bias"):
            if hf.get(flag) and not self.hf_extra.get(flag, True):
                raise UnsupportedHFConfig(f"{flag}: true is not supported for {self.name} (its layers have no biases)")
        if hf.get("use_sliding_window"):
            raise UnsupportedHFConfig("use_sliding_window: true is not supported (full attention only)")
        if hf.get("hidden_act", "silu") != "silu":
            raise UnsupportedHFConfig(f"hidden_act {hf['hidden_act']!r} is not supported (SwiGLU with silu only)")
        try:
            return LlamaFamilyConfig(
                arch=self.name,
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

    # ---- the model ------------------------------------------------------------------------------------

    def build(self, cfg: LlamaFamilyConfig) -> nn.Module:
        """A freshly initialised transformers model (its own init, seeded by the caller's torch RNG)."""
        import transformers

        model = getattr(transformers, self.hf_model)(self.to_hf(cfg))
        model.cfg = cfg  # the project's config beside transformers' own, as on the byte GPT
        if (
            m := branch_multiplier(cfg.depth_mup, cfg.n_layers)
        ) != 1.0:  # depth-muP: x + m * attn(...), x + m * mlp(...)
            for layer in self.blocks(model):
                layer.self_attn.register_forward_hook(_times(m, attention=True))
                layer.mlp.register_forward_hook(_times(m, attention=False))
        return model

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.model.layers

    def tiny(self, **fields) -> LlamaFamilyConfig:
        shape = {"n_layers": 2, "d_model": 16, "n_heads": 4, "n_kv_heads": 2, "d_ff": 32, "context": 16}
        return LlamaFamilyConfig(**{"arch": self.name, **shape, "vocab_size": 64, **fields})

    def describe(self, cfg: LlamaFamilyConfig) -> str:
        note = f" ({self.quirk})" if self.quirk else ""
        tied = ", tied embeddings" if cfg.tie_embeddings else ""
        return (
            f"transformers {self.hf_model}{note}: {cfg.n_layers} layers, "
            f"hidden {cfg.d_model}, {cfg.n_heads} heads, {cfg.n_kv_heads} key-value heads, d_ff {cfg.d_ff}, "
            f"RoPE theta {cfg.rope_theta}{tied},\ncontext {cfg.context} tokens. A Hugging Face model directory"
        )

    def logits(self, net: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        return net(input_ids=idx, use_cache=False).logits  # (B, T, V)

    def next_logits(self, model: nn.Module, idx: torch.Tensor, cache=None) -> tuple[torch.Tensor, object]:
        """transformers' key-value cache: only the newest token runs, while the sequence fits the context (past
        it, the window slides and every position moves: recomputed)."""
        if idx.size(1) > model.cfg.context:
            return super().next_logits(model, idx)
        out = model(input_ids=idx if cache is None else idx[:, -1:], cache=cache, use_cache=True)
        return out.logits[0, -1], out.cache

    def weights(self, model: nn.Module) -> StateDict:
        """A tied head is not a second tensor."""
        state = model.state_dict()
        if model.cfg.tie_embeddings:
            state.pop(TIED_HEAD, None)
        return state

    def load_weights(self, model: nn.Module, state: StateDict, assign: bool = False) -> None:
        """Strictly (every key, nothing extra); a tied head follows the embeddings."""
        if not model.cfg.tie_embeddings:
            model.load_state_dict(state, strict=True, assign=assign)
            return
        missing, unexpected = model.load_state_dict(state, strict=False, assign=assign)
        if unexpected or set(missing) - {TIED_HEAD}:
            raise RuntimeError(
                f"state does not fit the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
            )
        model.tie_weights()

    def init_buffers(self, model: nn.Module) -> None:
        """RoPE's frequencies, computed by transformers' own rotary module (its buffers are not saved)."""
        with torch.device(model.model.embed_tokens.weight.device):
            model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)

    def mlp_writer(self, layer: nn.Module) -> torch.Tensor:
        """The weight with which a layer's MLP writes to the residual stream (a Mixtral's: every expert's)."""
        return layer.mlp.down_proj.weight

    # ---- masked growth -------------------------------------------------------------------------------

    def set_gate(self, model: nn.Module, j: int, value: float) -> None:
        """Gate layer j's attention and MLP outputs by ``value``; hooks are installed on first use."""
        layer = self.blocks(model)[j]
        if not hasattr(layer, "gate_hooks"):
            device = next(layer.parameters()).device
            layer.register_buffer("gate", torch.ones((), device=device), persistent=False)
            layer.gate_hooks = (
                layer.self_attn.register_forward_hook(_scale_attention(layer)),
                layer.mlp.register_forward_hook(_scale_mlp(layer)),
            )
        layer.gate.fill_(value)

    @torch.no_grad()
    def fold_gates(self, model: nn.Module) -> None:
        """Scale o_proj and down_proj by each layer's gate, then remove the gate: same function, a plain model."""
        for layer in self.blocks(model):
            if not hasattr(layer, "gate_hooks"):
                continue
            g = layer.gate.item()
            if g != 1.0:
                layer.self_attn.o_proj.weight.mul_(g)
                self.mlp_writer(layer).mul_(g)
            for handle in layer.gate_hooks:
                handle.remove()
            del layer.gate_hooks
            del layer._buffers["gate"]

    # ---- width growth (the driver: models/families/width.py) ------------------------------------------------
    #   embed_tokens     E (V, C)        -> [E, E]                 (V, 2C)    rows written twice
    #   RMSNorm          g (C)           -> [g; g]                 (2C)       rms([x; x]) = rms(x): same output, twice
    #   q/k/v_proj       W (h x hd, C)   -> [[W, 0], [0, W]]       heads h and h + H (kv: h and h + KV) are twins
    #   o_proj           W (C, H x hd)   -> [[W, 0], [0, W]]       (2C, 2H x hd)
    #   gate/up_proj     W (F, C)        -> [[W, 0], [0, W]]       SwiGLU is elementwise: [h; h]
    #   down_proj        W (C, F)        -> [[W, 0], [0, W]]
    #   a bias           b (n)           -> [b; b]                 with its projection's output rows (Qwen2's q/k/v)
    #   final norm       g (C)           -> [g; g] / 2             the head sees [n/2; n/2] ...
    #   lm_head          H (V, C)        -> [H, H]                 ... and sums H n/2 + H n/2 = H n
    # The function is preserved exactly (float64 tests: <= 1e-10), with or without noise. Grouped queries stay
    # grouped: child query head i < H uses kv head i // (H / KV) of the first copy, head H + i the same kv head of
    # the second. RoPE is untouched because head_dim and rope_theta are kept (widening head_dim would change the
    # rotation frequencies: never done). Tied embeddings work as they are: the head *is* [E, E], and the final
    # norm's halving does what halving the head would. Every gradient halves but the final norm's (halved).

    def widen_config(self, cfg: LlamaFamilyConfig) -> LlamaFamilyConfig:
        """d_model, n_heads, n_kv_heads and d_ff doubled, head_dim kept."""
        doubled = {f: 2 * getattr(cfg, f) for f in ("d_model", "n_heads", "n_kv_heads", "d_ff")}
        return cfg.model_copy(update={**doubled, "head_dim": cfg.resolved_head_dim})

    def check_width(self, parent: LlamaFamilyConfig, child: LlamaFamilyConfig) -> None:
        child = child.model_copy(update={"head_dim": child.resolved_head_dim})
        if child != (expected := self.widen_config(parent)):
            raise width.WidthError(
                "width growth doubles d_model, n_heads, n_kv_heads and d_ff and keeps the rest, "
                f"but the child has {width.differences(child, expected)}"
            )

    def widen_tensor(
        self, key: str, t: torch.Tensor, moments: bool, noise_std: float, gen: torch.Generator
    ) -> torch.Tensor:
        if key in _DUP_COLUMNS:
            return torch.cat([t, t], dim=1)  # (V, 2C)
        if t.dim() == 1:
            out = torch.cat([t, t])  # (2C,)
            return out / 2 if key == _FINAL_NORM and not moments else out
        return width.linear(t, moments, noise_std, gen)  # (2n, 2m)

    def gradient_ratio(self, key: str) -> float:
        return 1.0 if key == _FINAL_NORM else 0.5

    # ---- sizes, from the config alone (float32 throughout: an upper bound under bf16 autocast) --------------

    def num_params(self, cfg: LlamaFamilyConfig) -> int:
        """Exactly the transformers model's distinct parameters: embeddings, layers, final RMSNorm, untied head.
        A member whose layers hold more adds them."""
        C, F, V = cfg.d_model, cfg.d_ff, cfg.vocab_size
        q, kv = cfg.n_heads * cfg.resolved_head_dim, cfg.n_kv_heads * cfg.resolved_head_dim
        layer = (
            2 * C  # input_layernorm, post_attention_layernorm
            + C * q  # q_proj
            + 2 * C * kv  # k_proj, v_proj (grouped-query: n_kv_heads)
            + q * C  # o_proj
            + 3 * C * F  # gate_proj, up_proj, down_proj (SwiGLU)
        )
        return V * C + cfg.n_layers * layer + C + (0 if cfg.tie_embeddings else V * C)

    def matmul_params(self, cfg: LlamaFamilyConfig) -> int:
        """The weights of every nn.Linear of the transformers model: q, k, v, o, SwiGLU's three, the head
        (a tied head is still a matmul). Grouped-query attention: k and v are n_kv_heads wide."""
        d, f, q, kv = cfg.d_model, cfg.d_ff, cfg.n_heads * cfg.resolved_head_dim, cfg.n_kv_heads * cfg.resolved_head_dim
        per_layer = d * q + 2 * d * kv + q * d + 3 * d * f
        return cfg.n_layers * per_layer + d * cfg.vocab_size

    def attention_width(self, cfg: LlamaFamilyConfig) -> int:
        return cfg.n_heads * cfg.resolved_head_dim  # every query head attends, whatever the key-value heads

    def footprint(self, cfg: LlamaFamilyConfig, batch: int) -> Footprint:
        """Trained with AdamW on ``batch`` sequences of ``cfg.context`` tokens."""
        B, T, C, F, H = batch, cfg.context, cfg.d_model, cfg.d_ff, cfg.n_heads
        per_block = (
            B * T * (6 * C + 3 * H * cfg.resolved_head_dim + 4 * F)  # norms, q k v (+ RoPE copies), out, SwiGLU's 3
            + B * H * T * T  # attention weights, when SDPA takes the math kernel
        )
        head = 3 * B * T * cfg.vocab_size  # logits, their float32 softmax, its gradient
        return Footprint.adamw(self.num_params(cfg), cfg.n_layers * per_block + 2 * B * T * C + head)

    # ---- a version's directory: a Hugging Face model directory ----------------------------------------------
    #   config.json, generation_config.json, model.safetensors   model.save_pretrained (transformers)
    #   tokenizer.json, tokenizer_config.json                    PreTrainedTokenizerFast.save_pretrained
    #   staged.json                                              the project's LlamaFamilyConfig (training context)
    # ``AutoModelForCausalLM.from_pretrained(dir)`` and ``AutoTokenizer.from_pretrained(dir)`` load it offline.

    def save(self, model: nn.Module, directory: Path, tokenizer, max_shard_bytes: int) -> None:
        """A Hugging Face directory; depth-muP's multiplier folded into o_proj and down_proj for the write only (the
        model in memory keeps its own weights, bit for bit), so transformers alone computes the trained function."""
        m = branch_multiplier(model.cfg.depth_mup, model.cfg.n_layers)
        layers = self.blocks(model) if m != 1.0 else []
        writers = [w for layer in layers for w in (layer.self_attn.o_proj.weight, self.mlp_writer(layer))]
        kept = [w.detach().clone() for w in writers]
        with torch.no_grad():
            for w in writers:
                w.mul_(m)
        try:
            self._save_hf(model, directory, tokenizer, max_shard_bytes)
        finally:
            with torch.no_grad():
                for w, k in zip(writers, kept):
                    w.copy_(k)

    def unfold(self, cfg: LlamaFamilyConfig, state: StateDict) -> StateDict:
        """A saved directory's weights -> the ones this family trains: depth-muP's multiplier divided back out."""
        m = branch_multiplier(cfg.depth_mup, cfg.n_layers)
        return scale_writers(state, self.layout, 1 / m) if m != 1.0 else state

    def _save_hf(self, model: nn.Module, directory: Path, tokenizer: Tokenizer | None, max_shard_bytes: int) -> None:
        """Write ``model`` and its tokenizer as a HF directory, its weights sharded with an index above
        ``max_shard_bytes``. ``tokenizer.json`` is rewritten with the tokenizer's canonical serialization after
        save_pretrained (which adds an empty post-processor template), so that its sha256 is the tokenizer's
        identity (models/data/tokenizer.py)."""
        from transformers import GenerationConfig, PreTrainedTokenizerFast
        from transformers.utils import logging as hf_logging

        tok = tokenizer or tokenizers.byte_tokenizer()
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


def _scale_attention(layer: nn.Module):
    def hook(module, args, out):
        return (out[0] * layer.gate, *out[1:])  # self_attn returns (attn_output, attn_weights)

    return hook


def _times(m: float, attention: bool):
    """Depth-muP's constant branch multiplier on a layer's attention or MLP output."""

    def hook(module, args, out):
        return (out[0] * m, *out[1:]) if attention else out * m

    return hook


def _scale_mlp(layer: nn.Module):
    def hook(module, args, out):
        return out * layer.gate

    return hook
