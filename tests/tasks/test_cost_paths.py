"""The pipeline's own costs kept near the floor: each byte of a version hashed once, its directory moved (not
copied) into the store and read where it is, decoding with a key-value cache, and a gate that reads figures
already measured on its held-out set instead of measuring them again."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from repo import REPO_ROOT

import tasks.store.manifest as manifest
import tasks.store.model_dir as model_dir
from models.families.family import Family
from models.families.llama import LlamaFamilyConfig
from models.families.lookup import family_of
from models.sample import generate_ids
from tests.versions import stage1_tags, stage_params

DECODERS = [
    LlamaFamilyConfig(arch=a, n_layers=2, d_model=16, n_heads=4, n_kv_heads=2, d_ff=24, context=12, vocab_size=40)
    for a in ("llama", "qwen3", "qwen2")
]


@pytest.mark.parametrize("cfg", DECODERS, ids=lambda c: c.arch)
def test_cached_decoding_matches_recomputing_the_window(cfg):
    family = family_of(cfg)
    torch.manual_seed(0)
    model = family.build(cfg).eval()
    idx, cache = torch.tensor([[3, 7, 1]]), None
    with torch.no_grad():
        for _ in range(20):  # past the context (12) the window slides: recomputed, still the same
            cached, cache = family.next_logits(model, idx, cache)
            plain, _ = Family.next_logits(family, model, idx)
            assert torch.allclose(cached, plain, atol=1e-5)
            idx = torch.cat([idx, cached.argmax().view(1, 1)], dim=1)
    torch.manual_seed(0)
    assert generate_ids(model, [3, 7, 1], 20, temperature=0) == idx[0, 3:23].tolist()


@pytest.fixture
def hashed(monkeypatch) -> Counter:
    """How often each file is hashed (the one function every sha256 of a file goes through)."""
    counts: Counter = Counter()
    real = manifest.sha256_file

    def counting(path: Path) -> str:
        counts[Path(path).name] += 1
        return real(path)

    monkeypatch.setattr(manifest, "sha256_file", counting)
    monkeypatch.setattr(model_dir, "sha256_file", counting)
    return counts


def _register_tiny(registry, hashed: Counter):
    from tasks.config import PipelineConfig
    from tasks.registry import register
    from tasks.store import save_model, save_optimizer

    cfg = DECODERS[0].model_copy(update={"n_layers": 3})
    model = family_of(cfg).build(cfg)
    spec = PipelineConfig.model_validate({"model": {"arch": "llama"}, "stages": [{"n_layers": 3, "steps": 0}]})
    spec = spec.stage_specs()[0]
    with registry.staging() as directory:
        hashes: dict[str, str] = {}
        sha = save_model(model, directory, hashes=hashes)
        save_optimizer({k: torch.zeros_like(v) for k, v in model.state_dict().items()}, directory, hashes)
        tags = stage1_tags(sha, "k")
        ref = register(
            registry, "m", "m", model_dir=directory, tags=tags, params=stage_params(spec), metrics={}, hashes=hashes
        )
        assert not directory.exists()  # moved into the store, not copied
    return ref, sha


def test_registration_hashes_each_file_once_and_moves_the_directory_into_the_store(tmp_path, hashed):
    from tasks.registry import Registry
    from tasks.store import local_dir, verify_manifest

    registry = Registry.resolve(tmp_path)
    ref, _ = _register_tiny(registry, hashed)
    assert hashed["model.safetensors"] == 1 and hashed["optimizer.safetensors"] == 1
    assert all(n == 1 for n in hashed.values()), hashed
    stored = local_dir(ref.source)
    assert stored.is_relative_to(local_dir(registry.artifact_location)) and (stored / "model.safetensors").is_file()
    assert list(registry.staging_root().iterdir()) == []  # nothing left behind
    hashed.clear()
    verify_manifest(stored, ref.manifest_sha256)  # the manifest written from the hashes taken while writing


def test_a_version_on_this_disk_is_read_where_it_is_each_file_hashed_once(tmp_path, hashed):
    from tasks.registry import Registry, download_with_optimizer, fetch
    from tasks.store import local_dir

    registry = Registry.resolve(tmp_path)
    ref, _ = _register_tiny(registry, hashed)
    hashed.clear()
    assert fetch(registry, ref, tmp_path / "unused").path == local_dir(ref.source)
    assert not (tmp_path / "unused").exists()
    hashed.clear()
    _, state, moments = download_with_optimizer(registry, ref, tmp_path / "unused")
    assert hashed["model.safetensors"] == 1 and hashed["optimizer.safetensors"] == 1 and state and moments
    # a file changed in place after registration is still refused
    (local_dir(ref.source) / "config.json").write_text("{}")
    from tasks.store import IntegrityError

    with pytest.raises(IntegrityError, match="config.json does not match"):
        fetch(registry, ref, tmp_path / "unused")


@pytest.mark.integration
def test_the_gate_reads_the_stages_loss_and_the_champions_figures_where_the_set_is_the_same(
    prefect_harness, workdir, monkeypatch
):
    import tasks.gate as gate_module
    from flows.staged import staged_training
    from tasks.config import load_config
    from tasks.registry import Registry, load_version, version_ref
    from tasks.registry.schema import GateTags

    evaluated = []
    real = gate_module.evaluate
    monkeypatch.setattr(gate_module, "evaluate", lambda model, batches: evaluated.append(1) or real(model, batches))
    smoke = REPO_ROOT / "configs" / "smoke.yaml"
    same = ["gate.every_stage=true", "gate.margin=0", "gate.eval_batches=2", "gate.batch_size=8"]
    steps = ["stages.0.steps=3", "stages.1.steps=2", "stages.2.steps=0"]
    staged_training(load_config(smoke, same + steps), str(workdir))
    assert evaluated == []  # every candidate's loss was its stage's own; every champion's, its gate tags
    registry = Registry.resolve(workdir)
    client = registry.client()
    for v in ("1", "2", "3"):
        mv = client.get_model_version("staged-smoke", v)
        tags = GateTags.from_tags(mv.tags)
        assert tags.eval_set and tags.val_loss == pytest.approx(version_ref(mv).val_loss, abs=1e-6)
        # the figure read is the figure measured: the same batches, the same arithmetic
        model, tokenizer = load_version(registry, version_ref(mv))
        config = load_config(smoke, same + steps)
        fresh = gate_module.measure(model, tokenizer, config.data, config.gate, 0, Path(workdir) / "cache")
        assert fresh.val_loss == pytest.approx(tags.val_loss, abs=2e-6)
    # another held-out set (more batches than the stages evaluated on): the gate measures again
    champion = str(client.get_registered_model("staged-smoke").aliases["champion"])
    evaluated.clear()
    other = ["gate.margin=0", "gate.eval_batches=3", "gate.batch_size=8"]
    staged_training(load_config(smoke, other + steps), str(workdir))  # stages skipped, version 3 gated
    assert len(evaluated) == 1 + (champion != "3")  # the candidate, and a champion other than itself
    assert GateTags.from_tags(client.get_model_version("staged-smoke", "3").tags).eval_set != tags.eval_set
