"""Registered weights above a size threshold: Hugging Face's sharded safetensors + index, each shard verified."""

import json

import pytest
import torch
from huggingface_hub import load_torch_model

from models.families.gpt import GPT, GPTConfig
from tasks.store import WeightsMismatch, load_state, save_model, save_optimizer
from tasks.store.model_dir import INDEX, WEIGHTS

CFG = GPTConfig(n_layers=2, d_model=32, n_heads=2, d_ff=64, context=16)


def test_small_models_stay_one_file(tmp_path):
    sha = save_model(GPT(CFG), tmp_path)
    assert (tmp_path / WEIGHTS).is_file() and not (tmp_path / INDEX).exists()
    assert load_state(tmp_path, sha)[0] == CFG


def test_above_the_threshold_shards_with_an_index_that_verifies_every_shard(tmp_path):
    model = GPT(CFG)
    sha = save_model(model, tmp_path, max_shard_bytes=40_000)  # ~120 kB of float32 weights
    index = json.loads((tmp_path / INDEX).read_text())
    shards = sorted(index["metadata"]["sha256"])
    assert len(shards) >= 3 and not (tmp_path / WEIGHTS).exists()
    assert shards == sorted(set(index["weight_map"].values()))
    cfg, state = load_state(tmp_path, sha)
    assert cfg == CFG and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    save_optimizer({}, tmp_path)  # a version directory also holds optimizer.safetensors
    again = GPT(CFG)  # Hugging Face's own loader reads it by the index
    load_torch_model(again, tmp_path, strict=True, safe=True)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())

    with pytest.raises(WeightsMismatch):
        load_state(tmp_path, "0" * 64)  # the index is what the registry's sha256 names
    victim = tmp_path / shards[1]
    victim.write_bytes(victim.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(WeightsMismatch, match=shards[1]):
        load_state(tmp_path, sha)


def test_a_sharded_version_directory_serves_as_a_pyfunc_model(tmp_path):
    import mlflow.pyfunc
    import numpy as np

    from tasks.registry import add_pyfunc

    model = GPT(CFG).eval()
    save_model(model, tmp_path, max_shard_bytes=40_000)
    add_pyfunc(tmp_path, CFG)
    ids = np.array([list(b"def f")], dtype=np.int64)
    served = mlflow.pyfunc.load_model(str(tmp_path)).predict(ids)
    with torch.no_grad():
        assert np.array_equal(served, model(torch.as_tensor(ids)).numpy())
