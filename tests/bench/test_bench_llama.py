"""The benchmark on the Llama family: its FLOPs count, its presets, and the whole protocol end to end on the
tiny-llama preset (a BPE trained on the training split, token shards in the workdir, transformers' Llama)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bench.suite.presets import PRESETS
from bench.suite.schedules import FIELD
from bench.suite.spec import Preset, budget, n_params, train_flops_per_token
from models.families.family import num_params
from models.families.llama import LlamaFamilyConfig
from models.families.lookup import FAMILIES, family_of

CONFIGS = {
    "gqa": LlamaFamilyConfig(arch="llama", n_layers=3, d_model=16, n_heads=4, n_kv_heads=2, d_ff=40, vocab_size=300),
    "head_dim": LlamaFamilyConfig(arch="llama", n_layers=2, d_model=16, n_heads=2, n_kv_heads=1, d_ff=24, head_dim=12),
    "tied": LlamaFamilyConfig(
        arch="llama", n_layers=2, d_model=8, n_heads=2, n_kv_heads=2, d_ff=16, tie_embeddings=True
    ),
    **{name: f.tiny(vocab_size=260) for name, f in FAMILIES.items() if f.config is LlamaFamilyConfig},  # every decoder
}


@pytest.mark.parametrize("name", CONFIGS)
def test_llama_flops_count_every_matmul_weight_of_the_built_model(name):
    cfg = CONFIGS[name]
    family = family_of(cfg)
    model = family.build(cfg)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))  # the tied head included
    assert family.matmul_params(cfg) == linear
    # and it is the exact count less what is no matmul: the embeddings, the RMSNorms' gains, Qwen2's biases
    no_matmul = sum(p.numel() for k, p in model.named_parameters() if p.dim() < 2 or "embed" in k)
    head = cfg.vocab_size * cfg.d_model if cfg.tie_embeddings else 0  # tied: the head's matmul, counted once
    assert family.matmul_params(cfg) == family.num_params(cfg) - no_matmul + head
    assert family.num_params(cfg) == num_params(model) == n_params(cfg)


def test_llama_flops_formula_is_6n_plus_attention_over_the_query_width():
    cfg = CONFIGS["head_dim"]  # queries 2 x 12 = 24 wide (not d_model), keys and values 1 x 12
    per_layer = 16 * 24 + 2 * 16 * 12 + 24 * 16 + 3 * 16 * 24
    n = 2 * per_layer + 16 * 256
    assert train_flops_per_token(cfg) == 6 * n + 6 * 2 * cfg.context * 24


def test_the_llama_presets_are_the_same_protocol_with_a_trained_bpe():
    p = PRESETS["llama"]
    assert p.model.arch == "llama" and p.model.n_layers == 12 and p.data.format == "text"
    assert p.data.encoding_errors == "replace" and 512 <= p.tokenizer.train.vocab_size <= 1024
    assert p.model.vocab_size == p.tokenizer.train.vocab_size and set(FIELD) <= set(p.schedules)
    assert p.tuning == PRESETS["quick"].tuning and p.heldout_seeds == PRESETS["quick"].heldout_seeds
    b = budget(p, p.budgets[0])
    assert b.params == n_params(p.model) and b.tokens == pytest.approx(2.0 * b.params, rel=0.01)


def test_a_preset_whose_vocabulary_is_not_its_tokenizers_is_refused():
    tree = PRESETS["tiny-llama"].model_dump()
    tree["tokenizer"]["train"]["vocab_size"] = 512
    with pytest.raises(ValueError, match="model.vocab_size 300 is not the tokenizer's 512"):
        Preset.model_validate(tree)
    gpt = PRESETS["tiny"].model_dump() | {"tokenizer": {"train": {"vocab_size": 512}}}
    with pytest.raises(ValueError, match="model.arch gpt reads bytes"):
        Preset.model_validate(gpt)


def test_the_protocol_runs_end_to_end_on_tiny_llama(tmp_path):
    from bench.main import build_preset, run_bench

    preset = build_preset("tiny-llama", None, None, [])
    summary = run_bench(preset, tmp_path, flow=False, publish_artifacts=False, log=lambda *_: None)
    written = json.loads((tmp_path / "bench-tiny-llama.json").read_text())
    for key in ("tuning_seeds", "heldout_seeds", "budgets", "throughput_ratio_vs_bare_loop"):
        assert written[key] == summary[key]
    (b,) = summary["budgets"]
    assert b["params"] == n_params(preset.model) and b["scratch"]["trials"] == 2
    assert set(b["schedules"]) == set(FIELD)
    for s in b["schedules"].values():  # every arm: the same 2 trials, the held-out seeds' figures
        assert s["trials"] == 2 == len(s["tuning"]["all"]) and set(s["flops_ratio"]["per_seed"]) == {"1", "2"}
    per_step = train_flops_per_token(preset.model) * preset.train.batch_size * preset.model.context
    scratch = [a for a in summary["arms"] if a["schedule"] == "scratch"]
    assert [a["flops"] for a in scratch] == [pytest.approx(b["scratch_steps"] * per_step)] * 2
    # one tokenizer, trained once on the training split, one set of token shards that every seed reads
    (shards,) = (tmp_path / "cache").glob("text-*")
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["vocab_size"] == 300 and len(manifest["tokenizer_sha256"]) == 64
    assert {a["seed"] for a in summary["arms"]} == {1, 2}  # no tuning seed is reported
    assert summary["mfu"] > 0 and (tmp_path / "bench-tiny-llama.png").stat().st_size > 0
    assert torch.isfinite(torch.tensor(summary["throughput_ratio_vs_bare_loop"]))
