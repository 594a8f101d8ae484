"""Family.load: a version directory back into a model, built on the meta device and given the saved tensors
(assign=True), for every family in FAMILIES (a new family is covered without editing this file)."""

import pytest
import torch

from models.families.lookup import FAMILIES, load_dir
from tasks.store import save_model

FAMILY_NAMES = list(FAMILIES)


def _logits(family, model, cfg):
    idx = torch.randint(0, family.vocab_size(cfg), (2, cfg.context), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return family.logits(model, idx)


@pytest.mark.parametrize("shard_bytes", [5 * 10**9, 20_000], ids=["one-file", "sharded"])
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_saved_model_loads_back_exactly(tmp_path, name, shard_bytes):
    family = FAMILIES[name]
    cfg = family.tiny()
    torch.manual_seed(0)
    model = family.build(cfg).eval()
    save_model(model, tmp_path, max_shard_bytes=shard_bytes)
    loaded = load_dir(tmp_path)
    assert loaded.cfg == cfg and not loaded.training
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    assert all(p.requires_grad for p in loaded.parameters())
    assert torch.equal(_logits(family, model, cfg), _logits(family, loaded, cfg))


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_from_state_takes_the_tensors_over_and_gates_still_work(name):
    family = FAMILIES[name]
    cfg = family.tiny()
    state = {k: v.clone() for k, v in family.weights(family.build(cfg)).items()}
    model = family.from_state(cfg, dict(state))
    weights = family.weights(model)
    assert all(weights[k].data_ptr() == v.data_ptr() for k, v in state.items())  # assigned, not copied
    before = _logits(family, model, cfg)
    family.set_gate(model, 1, 0.5)
    family.fold_gates(model)
    assert not torch.equal(before, _logits(family, model, cfg))


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_tensor_two_keys_share_becomes_two_parameters(name):
    family = FAMILIES[name]
    cfg = family.tiny(n_layers=2)
    state = family.weights(family.build(cfg))
    prefix = family.layout.block_prefix
    for key in [k for k in state if k.startswith(f"{prefix}1.")]:
        state[key] = state[key.replace(f"{prefix}1.", f"{prefix}0.", 1)]  # block 1 = block 0, one tensor
    model = family.from_state(cfg, state)
    blocks = family.blocks(model)
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(blocks[0].parameters(), blocks[1].parameters()))


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if "tie_embeddings" in f.config.model_fields])
def test_a_tied_head_is_the_embedding_after_loading(tmp_path, name):
    family = FAMILIES[name]
    cfg = family.tiny(tie_embeddings=True)
    model = family.build(cfg).eval()
    save_model(model, tmp_path)
    loaded = load_dir(tmp_path)
    head, embedding = loaded.get_output_embeddings().weight, loaded.get_input_embeddings().weight
    assert head is embedding and torch.equal(_logits(family, model, cfg), _logits(family, loaded, cfg))


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.hf_model_type])
def test_a_decoder_directory_round_trips_through_transformers(tmp_path, name):
    """What the pipeline registers loads in transformers' Auto classes with the same logits, and its config.json
    imports back (``stages.0.init``) as the same model config."""
    import json

    from transformers import AutoModelForCausalLM

    family = FAMILIES[name]
    cfg = family.tiny()
    model = family.build(cfg).eval()
    save_model(model, tmp_path)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    assert type(auto) is type(model)
    assert torch.equal(_logits(family, model, cfg), _logits(family, auto, cfg))
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["model_type"] == family.hf_model_type
    saved = {"max_position_embeddings": cfg.context, "head_dim": cfg.resolved_head_dim}  # as transformers has them
    assert family.from_hf(hf, context=cfg.context) == cfg.model_copy(update=saved)
