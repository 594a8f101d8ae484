"""configs/solar-upscale.yaml and configs/llama-pro.yaml end to end at toy size: a generated 8-layer Hugging Face
directory imported as version 1, grown by a recipe (SOLAR drop 2: 8 -> 12; LLaMA-Pro every 4: 8 -> 10 with the
imported layers and the head frozen) and trained through Prefect into an embedded MLflow store; the versions load
in transformers and their cards show the map."""

from pathlib import Path

import mlflow
import pytest
import torch
from corpus_helpers import pretrained_llama
from repo import REPO_ROOT
from safetensors.torch import load_file

from flows.staged import staged_training
from tasks.config import load_config
from tasks.registry import Registry
from tasks.registry.schema import VersionTags

pytestmark = pytest.mark.integration
TOY = ["model.context=32", "data.max_bytes=200000", "train.batch_size=4", "train.eval_every=3", "stages.1.steps=3"]
TOY += ["train.eval_batches=2", "gate.eval_batches=2", "gate.batch_size=4", "checkpoint.every=0"]


def _run(tmp_path: Path, config: str, tied: bool):
    """The config through the flow; returns (results, tags of version 2, its downloaded directory, the card)."""
    source = pretrained_llama(tmp_path / "pretrained", 8, tied)
    workdir = tmp_path / "work"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("HF_HUB_OFFLINE", "1")
        cfg = load_config(REPO_ROOT / "configs" / config, TOY + [f"stages.0.init.from_pretrained={source}"])
        results = staged_training(cfg, str(workdir))
    client = Registry.resolve(workdir).client()
    mv = client.get_model_version(cfg.registry.model_name, "2")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp_path / "dl"), tracking_uri=uri)
    card = mlflow.artifacts.load_text(mv.tags["model_card"])
    return results, VersionTags.from_tags(mv.tags), Path(local), card, source


def _loads_in_transformers(local: Path, n_layers: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(local, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(local, local_files_only=True)
    assert isinstance(model, LlamaForCausalLM) and model.config.num_hidden_layers == n_layers
    prompt = tokenizer("def main(", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 4


def test_solar_upscale_grows_8_into_12_and_shows_its_map(prefect_harness, tmp_path):
    results, tags, local, card, _ = _run(tmp_path, "solar-upscale.yaml", tied=True)
    assert [r.ref.n_layers for r in results] == [8, 12] and results[1].steps == 3
    assert tags.layer_map == "0 1 2 3 4 5 2* 3* 4* 5* 6 7" and tags.growth == "stack" and tags.trained is None
    assert "| layer map (parent block of each block, new copies starred) | 0 1 2 3 4 5 2* 3* 4* 5* 6 7 |" in card
    assert "| 2 | 2 | 12 | stack | 3 |" in card and card.rstrip().count("0 1 2 3 4 5 2* 3* 4* 5* 6 7") >= 2
    _loads_in_transformers(local, 12)


def test_llama_pro_adds_a_block_after_every_4_and_trains_only_them_and_the_embeddings(prefect_harness, tmp_path):
    results, tags, local, card, source = _run(tmp_path, "llama-pro.yaml", tied=False)
    assert [r.ref.n_layers for r in results] == [8, 10]
    assert results[1].val_loss_init == pytest.approx(results[0].val_loss, rel=1e-5)  # identity: the imported function
    assert tags.layer_map == "0 1 2 3 3* 4 5 6 7 7*" and tags.growth == "identity"
    assert tags.freeze == "blocks parent; embeddings false; head true" and tags.trained == "blocks 4 9; embeddings"
    assert "| trained (growth.freeze) | blocks 4 9; embeddings |" in card and "0 1 2 3 3* 4 5 6 7 7*" in card
    theirs, ours = load_file(source / "model.safetensors"), load_file(local / "model.safetensors")
    parent_of = [0, 1, 2, 3, 3, 4, 5, 6, 7, 7]
    for key, value in ours.items():
        if key.startswith("model.layers."):
            j, suffix = key.removeprefix("model.layers.").split(".", 1)
            same = torch.equal(value, theirs[f"model.layers.{parent_of[int(j)]}.{suffix}"])
            if int(j) not in (4, 9):
                assert same, key  # the imported layers stayed
            elif suffix == "mlp.down_proj.weight":
                assert value.any(), key  # a new layer's zeroed writer trained
        elif key.startswith("model.embed_tokens."):
            assert not torch.equal(value, theirs[key]), key  # the embeddings trained
        else:
            assert torch.equal(value, theirs[key]), key  # the final norm and the head stayed
    _loads_in_transformers(local, 10)
