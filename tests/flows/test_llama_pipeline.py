"""End to end on the Llama path: configs/llama-demo.yaml at toy size and configs/llama-upscale.yaml through Prefect
(test harness) into an embedded MLflow store; the versions load with transformers (offline) and generate, and load
through mlflow.pyfunc."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from corpus_helpers import pretrained_llama
from repo import REPO_ROOT

from flows.cli.main import main
from flows.staged import staged_training
from models.data import tokenizer as tokenizers
from tasks.config import load_config
from tasks.registry import Registry, load_pyfunc
from tasks.registry.schema import IMPORTED, ImportTags, VersionTags
from tasks.store import imported_sha256, model_dir, sha256_file

pytestmark = pytest.mark.integration
CONFIGS = REPO_ROOT / "configs"
TOY = [
    "data.max_bytes=300000",
    "tokenizer.train.vocab_size=320",
    "model.d_model=32",
    "model.d_ff=64",
    "model.context=32",
    "train.batch_size=8",
    "train.eval_every=5",
    "train.eval_batches=2",
    "checkpoint.every=0",
    "gate.eval_batches=2",
    "gate.batch_size=4",
    "stages.0.steps=12",
    "stages.1.steps=6",
    "stages.2.steps=4",
]


def _run(workdir: Path, config: str, overrides: list[str]):
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("HF_HUB_OFFLINE", "1")
        return staged_training(load_config(CONFIGS / config, overrides), str(workdir))


def _download(workdir: Path, name: str, version: str, dst: Path) -> tuple[Path, dict]:
    client = Registry.resolve(workdir).client()
    mv = client.get_model_version(name, version)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    return Path(
        mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dst), tracking_uri=uri)
    ), mv.tags


@pytest.fixture(scope="module")
def llama_run(prefect_harness, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("llama")
    return workdir, _run(workdir, "llama-demo.yaml", TOY)


def test_three_llama_versions_are_hugging_face_directories_that_generate(llama_run, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    workdir, results = llama_run
    assert [r.ref.version for r in results] == ["1", "2", "3"] and [r.ref.n_layers for r in results] == [3, 6, 12]
    local, tags = _download(workdir, "staged-llama", "3", tmp_path)
    expected = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert expected | {"MLmodel", "optimizer.safetensors"} <= {p.name for p in local.iterdir()}
    assert not list(local.glob("*.bin")) and not list(local.glob("*.pkl"))
    assert sha256_file(local / "model.safetensors") == tags["weights_sha256"]
    assert tokenizers.sha256(tokenizers.load(local)) == tags["tokenizer_sha256"] == results[0].ref.tokenizer_sha256
    assert json.loads((local / "config.json").read_text())["num_hidden_layers"] == 12
    model = AutoModelForCausalLM.from_pretrained(local, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(local, local_files_only=True)
    assert isinstance(model, LlamaForCausalLM) and model.config.num_key_value_heads == 2
    assert model.config.vocab_size == len(tokenizer) == 320
    prompt = tokenizer("def main(", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 12 and tokenizer.decode(out[0]).startswith("def main(")
    # the pyfunc flavour of the same directory: token ids -> logits over the BPE vocabulary
    with torch.no_grad():
        ours = model(input_ids=prompt["input_ids"]).logits.numpy()
    served = load_pyfunc(Registry.resolve(workdir), "models:/staged-llama/3").predict(
        prompt["input_ids"].numpy().astype(np.int64)
    )
    assert served.shape == (1, prompt["input_ids"].shape[1], 320)
    np.testing.assert_allclose(served, ours, rtol=1e-5, atol=1e-5)


def test_identity_growth_starts_where_the_parent_ended(llama_run):
    _, results = llama_run
    for parent, child in zip(results, results[1:]):
        assert child.val_loss_init == pytest.approx(parent.val_loss, rel=1e-5)
    assert results[-1].ref.growth == "identity"


def test_a_rerun_retrains_the_same_tokenizer_and_skips_every_stage(llama_run):
    workdir, first = llama_run
    again = _run(workdir, "llama-demo.yaml", TOY)
    assert all(r.skipped for r in again) and [r.ref.version for r in again] == ["1", "2", "3"]


def test_generate_and_eval_report_bits_per_byte_and_per_token(llama_run, capsys, monkeypatch):
    workdir, _ = llama_run
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    w = ["--workdir", str(workdir)]
    assert main(["generate", "models:/staged-llama@champion", "--prompt", "import ", "--max-bytes", "8", *w]) == 0
    out = capsys.readouterr().out
    assert out.startswith("import ") and len(out) > len("import ") + 8
    assert main(["eval", "models:/staged-llama/3", *w]) == 0
    out = capsys.readouterr().out
    assert "bits/byte" in out and "bits/token" in out
    client = Registry.resolve(workdir).client()
    gate = client.get_model_version("staged-llama", "3").tags
    bpb, bpt = float(gate["gate_bpb"]), float(gate["gate_bpt"])
    assert 0 < bpb < bpt  # a BPE token stands for more than one byte
    card = mlflow.artifacts.load_text(gate["model_card"])
    assert "transformers LlamaForCausalLM: 12 layers" in card and "2 key-value heads" in card


def test_qwen3_grows_in_depth_and_width_through_the_pipeline(prefect_harness, tmp_path):
    from transformers import AutoModelForCausalLM, Qwen3ForCausalLM

    overrides = TOY + ["model.arch=qwen3", "registry.model_name=staged-qwen3"]
    overrides += ["stages.2.n_layers=6", "stages.2.growth.operator=width", "stages.2.optimizer.state=transfer"]
    results = _run(tmp_path / "work", "llama-demo.yaml", overrides)
    assert [r.ref.n_layers for r in results] == [3, 6, 6]
    for parent, child in zip(results, results[1:]):  # identity, then width: both function preserving, in float32
        assert child.val_loss_init == pytest.approx(parent.val_loss, rel=1e-5)
    local, _ = _download(tmp_path / "work", "staged-qwen3", "3", tmp_path / "dl")
    model = AutoModelForCausalLM.from_pretrained(local, local_files_only=True)
    assert isinstance(model, Qwen3ForCausalLM) and model.config.hidden_size == 64
    assert model.config.num_key_value_heads == 4 and model.config.head_dim == 8  # heads doubled, head_dim kept
    assert model.model.embed_tokens.padding_idx is None


def test_depth_mup_grows_exactly_through_the_registry_and_loads_in_transformers(prefect_harness, tmp_path):
    """model.depth_mup: sqrt end to end: each version's directory holds the multiplier folded into o_proj/down_proj,
    the next stage reads it back unfolded and rescales the writers for its depth, so identity growth (with noise on
    the new blocks and their own LR warmup) starts where its parent ended; transformers and the pyfunc agree."""
    from transformers import AutoModelForCausalLM

    overrides = TOY + ["model.depth_mup=sqrt", "registry.model_name=staged-mup"]
    overrides += [f"stages.{i}.growth={{operator: identity, noise: 0.001, new_warmup_steps: 2}}" for i in (1, 2)]
    results = _run(tmp_path / "work", "llama-demo.yaml", overrides)
    for parent, child in zip(results, results[1:]):
        assert child.val_loss_init == pytest.approx(parent.val_loss, rel=1e-5)
    local, _ = _download(tmp_path / "work", "staged-mup", "3", tmp_path / "dl")
    assert json.loads((local / "staged.json").read_text())["depth_mup"] == "sqrt"
    model = AutoModelForCausalLM.from_pretrained(local, local_files_only=True)
    ids = np.array([[1, 2, 3, 4, 5]], dtype=np.int64)
    with torch.no_grad():
        expected = model(input_ids=torch.as_tensor(ids)).logits.numpy()
    served = load_pyfunc(Registry.resolve(tmp_path / "work"), "models:/staged-mup/3").predict(ids)
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)


def test_the_qwen2_demo_grows_in_depth_then_width_and_loads_in_transformers(prefect_harness, tmp_path):
    """configs/qwen2-demo.yaml at toy size: Qwen2's q/k/v biases travel with identity and width growth."""
    from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

    results = _run(tmp_path / "work", "qwen2-demo.yaml", [o for o in TOY if not o.startswith("model.d_")])
    assert [r.ref.n_layers for r in results] == [3, 6, 6]
    for parent, child in zip(results, results[1:]):  # identity, then width: both function preserving, in float32
        assert child.val_loss_init == pytest.approx(parent.val_loss, rel=1e-5)
    local, tags = _download(tmp_path / "work", "staged-qwen2", "3", tmp_path / "dl")
    model = AutoModelForCausalLM.from_pretrained(local, local_files_only=True)
    assert isinstance(model, Qwen2ForCausalLM) and model.config.hidden_size == 128  # 64, doubled
    assert model.config.num_key_value_heads == 4 and tags["growth"] == "width"
    assert model.model.layers[0].self_attn.q_proj.bias.shape == (8 * 16,)  # 2H heads of head_dim 16, biased
    pyfunc = load_pyfunc(Registry.resolve(tmp_path / "work"), "models:/staged-qwen2/3")
    ids = np.array([[1, 2, 3, 4]], dtype=np.int64)
    with torch.no_grad():
        expected = model(input_ids=torch.as_tensor(ids)).logits.numpy()
    np.testing.assert_allclose(pyfunc.predict(ids), expected, rtol=1e-5, atol=1e-5)


def test_an_imported_directory_is_version_1_and_grows_12_to_24_style(prefect_harness, tmp_path, monkeypatch):
    source = pretrained_llama(tmp_path / "pretrained", 4, tied=True)
    hashed = []  # the imported weights are read for their sha256 once: by the lookup, for the key and the tag
    real = model_dir.sha256_file
    monkeypatch.setattr(model_dir, "sha256_file", lambda path: hashed.append(Path(path).resolve().parent) or real(path))
    overrides = [f"stages.0.init.from_pretrained={source}", "stages.0.n_layers=4", "stages.1.n_layers=8"]
    overrides += ["model.context=32", "data.max_bytes=200000", "train.batch_size=4", "stages.1.steps=3"]
    results = _run(tmp_path / "work", "llama-upscale.yaml", overrides)
    assert hashed.count(source.resolve()) == 1
    client = Registry.resolve(tmp_path / "work").client()
    v1, v2 = (client.get_model_version("staged-upscale", v) for v in ("1", "2"))
    imported = ImportTags.from_tags(v1.tags)
    assert imported.source == IMPORTED and imported.imported_sha256 == imported_sha256(source)
    assert imported.imported_from == str(source.resolve()) and ImportTags.from_tags(v2.tags) is None
    tags = VersionTags.from_tags(v2.tags)
    assert (tags.parent_version, tags.n_layers, tags.growth) == ("1", 8, "identity")
    assert tags.tokenizer_sha256 == tokenizers.sha256(tokenizers.load(source))
    assert results[0].steps == 0 and results[1].val_loss_init == pytest.approx(results[0].val_loss, rel=1e-5)
    local, _ = _download(tmp_path / "work", "staged-upscale", "1", tmp_path / "dl")
    from safetensors.torch import load_file

    ours, theirs = load_file(local / "model.safetensors"), load_file(source / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
