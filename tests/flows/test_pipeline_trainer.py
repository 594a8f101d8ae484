"""The trainer's keys through the flow (Prefect + MLflow + torchrun): micro batches, activation checkpointing,
bf16 autocast and LLaMA-Pro's frozen parent on a grown stage sharded by FSDP2 over 2 gloo processes. The
version says how it was trained, the parent's blocks come out of the grown stage unchanged, and the stage's
run carries its tokens/s, MFU and peak memory."""

import pytest
import torch

from tasks.config import PipelineConfig
from tasks.registry import Registry, download_with_optimizer, metric_history
from tasks.registry.schema import Metrics, StageParams

PIPELINE = {
    "retry": {"retries": 0},
    "registry": {"model_name": "trainer-e2e"},
    "data": {"max_bytes": 100_000},
    "model": {"d_model": 16, "n_heads": 2, "d_ff": 32, "context": 16},
    "train": {
        "batch_size": 8,
        "warmup_steps": 1,
        "eval_every": 2,
        "eval_batches": 1,
        "device": "cpu",
        "micro_batch_size": 2,
        "activation_checkpointing": "full",
        "precision": "bf16",
    },
    "stages": [
        {"n_layers": 2, "steps": 3},
        {
            "n_layers": 4,
            "steps": 2,
            "growth": {"operator": "stack", "freeze": "parent"},
            "parallel": {"strategy": "fsdp", "nproc": 2},
        },
    ],
}


@pytest.mark.integration
def test_trainer_keys_through_the_flow_under_fsdp(prefect_harness, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from flows.staged import staged_training

    results = staged_training(PipelineConfig.model_validate(PIPELINE), str(tmp_path))
    registry = Registry.resolve(tmp_path)
    first, grown = (r.ref for r in results)
    assert [r.steps for r in results] == [3, 2]
    assert first.freeze is None and grown.freeze == "parent"
    run = registry.client().get_run(grown.run_id)
    train = StageParams.read(run.data.params).train
    assert (train["micro_batch_size"], train["activation_checkpointing"], train["precision"]) == ("2", "full", "bf16")
    for metric in (Metrics.TOKENS_PER_S, Metrics.MFU, Metrics.PEAK_MEMORY):
        assert metric_history(registry, grown.run_id, metric)[-1][1] > 0, metric

    _, parent, _ = download_with_optimizer(registry, first, tmp_path / "v1")
    _, child, _ = download_with_optimizer(registry, grown, tmp_path / "v2")
    for key, value in child.items():  # stack: child blocks 0, 1 are the parent's; 2, 3 its copies
        if key.startswith(("blocks.2.", "blocks.3.")):
            continue
        assert torch.equal(value, parent[key]), f"{key} changed although frozen"
    new = [k for k in child if k.startswith("blocks.2.")]
    assert any(not torch.equal(child[k], parent[k.replace("blocks.2.", "blocks.0.", 1)]) for k in new)
