"""The Mixtral family: transformers' ``MixtralForCausalLM``, a Llama/Mistral decoder whose MLP is a sparse mixture of
``experts`` SwiGLU experts, ``top_k`` of them per token. Reached from a dense Llama or Mistral parent by the
``upcycle`` growth operator (models/growth.py; Komatsuzaki et al. 2022, "Sparse Upcycling"), or trained from scratch.

Layer i of the installed transformers (5.x) holds, besides attention and norms:

    model.layers.<i>.mlp.gate.weight                (E, C)        the router (MixtralTopKRouter)
    model.layers.<i>.mlp.experts.gate_up_proj       (E, 2F, C)    expert e: [gate_proj; up_proj] (chunked in that order)
    model.layers.<i>.mlp.experts.down_proj          (E, C, F)     expert e's down_proj: a residual writer

The router takes a float32 softmax over the E logits, keeps the top k and divides them by their sum: the k weights
of a token always sum to 1. So k identical experts compute the dense MLP exactly whatever the router says (a zero
router: weights 1/k each, exact in float64 too), which is what makes upcycling function preserving. Only
``output_router_logits: false`` is used: the project's loss is the token loss, so Mixtral's load-balancing aux loss
(``router_aux_loss_coef``) is not added while training, and transformers' Mixtral has no router z-loss.

``save_pretrained`` writes the checkpoint's historical per-expert keys (``block_sparse_moe.experts.<e>.w1/w2/w3``,
``block_sparse_moe.gate``); ``unfold`` maps a directory's keys back to the fused ones above.
"""

from __future__ import annotations

import re

import torch
from pydantic import Field, model_validator

from models.families import width
from models.families.family import FLOAT32, Footprint, Layout, StateDict
from models.families.llama import DecoderFamily, LlamaFamilyConfig

ROUTER, GATE_UP, DOWN = "mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"
DENSE = ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")  # a Llama layer's SwiGLU
_LEGACY = re.compile(r"^(model\.layers\.\d+\.)block_sparse_moe\.(?:gate\.weight|experts\.(\d+)\.(w[123])\.weight)$")


class MixtralFamilyConfig(LlamaFamilyConfig):
    """A Llama-family config with a sparse MoE MLP: ``experts`` SwiGLU experts of ``d_ff``, ``top_k`` per token."""

    experts: int = Field(4, ge=2)  # num_local_experts; one expert is a dense model
    top_k: int = Field(2, ge=1)  # num_experts_per_tok

    @model_validator(mode="after")
    def _top_k_fits(self) -> MixtralFamilyConfig:
        if self.top_k > self.experts:
            raise ValueError(f"top_k {self.top_k} is more than the {self.experts} experts")
        return self


LAYOUT = Layout(
    "model.layers.",
    ("self_attn.o_proj.weight", DOWN),
    tuple(f for f in MixtralFamilyConfig.model_fields if f not in ("arch", "n_layers")),
    ("model.embed_tokens.",),
)


class Mixtral(DecoderFamily):
    """``transformers.MixtralForCausalLM`` with full attention (``sliding_window: None``)."""

    name, hf_config, hf_model = "mixtral", "MixtralConfig", "MixtralForCausalLM"
    config = MixtralFamilyConfig
    layout = LAYOUT
    hf_model_type = None  # stages.0.init does not import Mixtral directories (their keys need unfold): grow into one
    quirk = "sparse MoE MLP"
    # full attention; the token loss only (no router logits, so no aux loss); no router jitter; transformers' eager
    # experts loop (its default grouped_mm takes no float64, which the exactness tests need)
    hf_extra = {
        "sliding_window": None,
        "output_router_logits": False,
        "router_jitter_noise": 0.0,
        "experts_implementation": "eager",
    }

    def to_hf(self, cfg: MixtralFamilyConfig, eos_token_id: int | None = None):
        hf = super().to_hf(cfg, eos_token_id)
        hf.num_local_experts, hf.num_experts_per_tok = cfg.experts, cfg.top_k
        return hf

    def tiny(self, **fields) -> MixtralFamilyConfig:
        shape = {"n_layers": 2, "d_model": 16, "n_heads": 4, "n_kv_heads": 2, "d_ff": 32, "context": 16}
        return MixtralFamilyConfig(**{"arch": self.name, **shape, "vocab_size": 64, **fields})

    def describe(self, cfg: MixtralFamilyConfig) -> str:
        return (
            super()
            .describe(cfg)
            .replace(f"d_ff {cfg.d_ff}", f"{cfg.experts} SwiGLU experts of d_ff {cfg.d_ff}, top-{cfg.top_k} routing")
        )

    def mlp_writer(self, layer) -> torch.Tensor:
        return layer.mlp.experts.down_proj

    # ---- upcycling: a dense parent's state -> this family's ---------------------------------------------------

    def upcycle(
        self, state: StateDict, child: MixtralFamilyConfig, router_std: float, noise: float, seed: int
    ) -> StateDict:
        """Every expert of layer i is a copy of the dense parent's MLP i (plus N(0, noise^2) per expert and weight
        matrix), its router N(0, router_std^2). Adam moments map with both at 0 (models/growth_moments.py)."""
        gen, out = torch.Generator().manual_seed(seed), {}
        for key, t in state.items():
            layer, _, suffix = key.rpartition(".mlp.")
            if not layer or f"mlp.{suffix}" not in DENSE:
                out[key] = t.clone()
                continue
            if suffix == "up_proj.weight":
                continue  # with gate_proj
            if suffix == "down_proj.weight":
                out[f"{layer}.{DOWN}"] = self._experts(t, child.experts, noise, gen)
                continue
            gate_up = torch.cat([t, state[f"{layer}.mlp.up_proj.weight"]])  # (2F, C): gate rows, then up rows
            out[f"{layer}.{GATE_UP}"] = self._experts(gate_up, child.experts, noise, gen)
            router = t.new_zeros(child.experts, t.size(1))  # (E, C)
            if router_std > 0 and t.device.type != "meta":
                router = torch.randn(router.shape, generator=gen, dtype=t.dtype).mul_(router_std)
            out[f"{layer}.{ROUTER}"] = router
        return out

    @staticmethod
    def _experts(w: torch.Tensor, n: int, noise: float, gen: torch.Generator) -> torch.Tensor:
        out = w.unsqueeze(0).repeat(n, *([1] * w.dim()))  # (E, ...)
        if noise > 0 and w.device.type != "meta":
            out += torch.randn(out.shape, generator=gen, dtype=w.dtype).mul_(noise)
        return out

    @staticmethod
    def upcycled_sources(parent_keys) -> dict[str, tuple[str, ...]]:
        """Each child key -> the parent keys it was made from (none: the router, new)."""
        out: dict[str, tuple[str, ...]] = {}
        for key in parent_keys:
            layer, _, suffix = key.rpartition(".mlp.")
            if layer and suffix == "gate_proj.weight":
                out[f"{layer}.{GATE_UP}"] = (key, f"{layer}.mlp.up_proj.weight")
                out[f"{layer}.{ROUTER}"] = ()
            elif layer and suffix == "down_proj.weight":
                out[f"{layer}.{DOWN}"] = (key,)
            elif not (layer and suffix == "up_proj.weight"):
                out[key] = (key,)
        return out

    # ---- a version's directory: transformers writes per-expert keys -------------------------------------------

    def unfold(self, cfg: MixtralFamilyConfig, state: StateDict) -> StateDict:
        """A directory's per-expert keys (w1 = gate, w3 = up, w2 = down) -> the fused ones the model trains."""
        out, experts = {}, {}
        for key, t in state.items():
            m = _LEGACY.match(key)
            if m is None:
                out[key] = t
            elif m.group(2) is None:
                out[f"{m.group(1)}{ROUTER}"] = t
            else:
                experts.setdefault(m.group(1), {})[int(m.group(2)), m.group(3)] = t
        for layer, w in experts.items():
            n = cfg.experts
            out[f"{layer}{GATE_UP}"] = torch.stack([torch.cat([w[e, "w1"], w[e, "w3"]]) for e in range(n)])
            out[f"{layer}{DOWN}"] = torch.stack([w[e, "w2"] for e in range(n)])
        return super().unfold(cfg, out)

    # ---- width growth is not defined for experts (yet) ---------------------------------------------------------

    def check_width(self, parent, child) -> None:
        raise width.WidthError(
            "width growth of a mixtral model is not supported (grow it in depth, or widen the dense parent)"
        )

    # ---- sizes: every expert is stored, only top_k of them compute ---------------------------------------------

    def num_params(self, cfg: MixtralFamilyConfig) -> int:
        dense_mlp = 3 * cfg.d_model * cfg.d_ff
        moe = cfg.experts * dense_mlp + cfg.experts * cfg.d_model  # experts and router
        return super().num_params(cfg) + cfg.n_layers * (moe - dense_mlp)

    def matmul_params(self, cfg: MixtralFamilyConfig) -> int:
        """The weights a token multiplies by: attention, the router, its ``top_k`` active experts (not all E), the
        head. So ``flops_per_token`` counts active experts only."""
        dense_mlp = 3 * cfg.d_model * cfg.d_ff
        active = cfg.top_k * dense_mlp + cfg.experts * cfg.d_model
        return super().matmul_params(cfg) + cfg.n_layers * (active - dense_mlp)

    def footprint(self, cfg: MixtralFamilyConfig, batch: int) -> Footprint:
        """The dense footprint at the MoE's parameters, each token's SwiGLU activations kept ``top_k`` times."""
        dense = super().footprint(cfg, batch)
        B, T = batch, cfg.context
        moe = cfg.n_layers * B * T * ((cfg.top_k - 1) * (4 * cfg.d_ff + cfg.d_model) + 2 * cfg.experts)
        return Footprint.adamw(self.num_params(cfg), dense.activations // FLOAT32 + moe)
