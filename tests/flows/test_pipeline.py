"""End to end: the smoke pipeline through Prefect (test harness) into a temporary MLflow store."""

from pathlib import Path

import mlflow
import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId
from repo import REPO_ROOT
from safetensors.torch import load_file

from flows.staged import staged_training
from models.growth import stack_plan
from tasks.config import load_config
from tasks.registry import Registry
from tasks.store import sha256_file

pytestmark = pytest.mark.integration
SMOKE = REPO_ROOT / "configs" / "smoke.yaml"


def _versions(registry: Registry, name: str):
    client = registry.client()
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    return client, versions


def _weights(registry: Registry, version, tmp: Path) -> dict[str, torch.Tensor]:
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=version.source, dst_path=str(tmp), tracking_uri=registry.tracking_uri
    )
    return load_file(Path(local) / "model.safetensors")


@pytest.fixture(scope="module")
def smoke_run(prefect_harness, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        state = staged_training(load_config(SMOKE), str(workdir), return_state=True)
    return workdir, state


def test_three_stages_register_three_versions_with_lineage(smoke_run, tmp_path):
    workdir, state = smoke_run
    assert state.is_completed()
    registry = Registry.resolve(workdir)
    client, versions = _versions(registry, "staged-smoke")
    assert [str(v.version) for v in versions] == ["1", "2", "3"]
    assert [v.tags["stage"] for v in versions] == ["1", "2", "3"]
    assert [v.tags["n_layers"] for v in versions] == ["3", "6", "12"]
    assert [v.tags["parent_version"] for v in versions] == ["", "1", "2"]
    assert len({v.tags["stage_key"] for v in versions}) == 3
    model = client.get_registered_model("staged-smoke")
    assert {k: str(v) for k, v in model.aliases.items()} == {
        "stage-1": "1",
        "stage-2": "2",
        "stage-3": "3",
        "champion": "3",
    }
    for v in versions:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=v.source, dst_path=str(tmp_path / str(v.version)), tracking_uri=registry.tracking_uri
            )
        )
        # plain files for our own loader, plus the MLflow pyfunc files (tests/flows/test_serving.py)
        assert {"config.json", "model.safetensors", "optimizer.safetensors", "MLmodel"} <= {
            p.name for p in local.iterdir()
        }
        assert sha256_file(local / "model.safetensors") == v.tags["weights_sha256"]
    # the run writes nothing outside its workdir
    assert (workdir / "mlflow.db").is_file() and (workdir / "staged-smoke-loss.png").stat().st_size > 10_000


def test_each_stage_run_logs_losses_and_the_grown_models_initial_loss(smoke_run):
    workdir, state = smoke_run
    registry = Registry.resolve(workdir)
    client, versions = _versions(registry, "staged-smoke")
    results = state.result()
    for v, r, steps in zip(versions, results, (20, 10, 5)):
        assert len(client.get_metric_history(v.run_id, "train_loss")) == steps
        val = client.get_metric_history(v.run_id, "val_loss")
        assert val[-1].value == pytest.approx(r.val_loss)
        assert client.get_metric_history(v.run_id, "val_loss_init")[0].value == pytest.approx(r.val_loss_init)
        assert client.get_run(v.run_id).info.run_name == f"stage-{v.tags['stage']}"
    assert results[2].val_loss < results[0].val_loss
    # stacking starts each stage near where its parent ended (not a fresh model at ~5.5)
    assert results[1].val_loss_init < results[0].val_loss_init - 0.5


def test_flow_run_has_three_named_task_runs_and_artifacts(smoke_run):
    _, state = smoke_run
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    stages = ["stage-1-3L", "stage-2-6L", "stage-3-12L"]
    publications = ["card-v1", "card-v2", "card-v3", "comparison", "summary"]  # each its own task run
    assert sorted(t.name for t in task_runs) == sorted([*stages, "gate-v3", *publications])
    assert all(t.state.is_completed() for t in task_runs)
    by_type = {}
    for a in artifacts:
        by_type.setdefault(a.type, []).append(a)
    assert len(by_type["progress"]) == 3 and all(float(a.data) == 100.0 for a in by_type["progress"])
    assert sorted(a.key for a in by_type["table"]) == [
        "staged-smoke-champions",
        "staged-smoke-stages",
        "staged-smoke-summary",
    ]
    markdown = {a.key: a.data for a in by_type["markdown"]}
    assert "models:/staged-smoke/3" in markdown["staged-smoke-versions"]
    assert "PROMOTED" in markdown["staged-smoke-gate"]


def test_rerun_skips_registered_stages(smoke_run):
    workdir, first = smoke_run
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        results = staged_training(load_config(SMOKE), str(workdir))
    assert all(r.skipped for r in results)
    assert [r.ref.version for r in results] == ["1", "2", "3"]
    assert [r.val_loss for r in results] == pytest.approx([r.val_loss for r in first.result()])
    _, versions = _versions(Registry.resolve(workdir), "staged-smoke")
    assert len(versions) == 3


def test_zero_step_stage_registers_exactly_the_stacked_parent(prefect_harness, workdir, tmp_path):
    # the form a deployment uses: a YAML path and --set style overrides as flow parameters
    overrides = ["stages.1.steps=0", "stages.2.steps=0", "stages.0.steps=3"]
    results = staged_training(str(SMOKE), str(workdir), overrides=overrides)
    assert results[1].val_loss == results[1].val_loss_init
    registry = Registry.resolve(workdir)
    _, (v1, v2, v3) = _versions(registry, "staged-smoke")
    w1, w2, w3 = (_weights(registry, v, tmp_path / str(v.version)) for v in (v1, v2, v3))
    for child, parent, plan in ((w2, w1, stack_plan(3, 6)), (w3, w2, stack_plan(6, 12))):
        for key, value in child.items():
            if key.startswith("blocks."):
                _, j, suffix = key.split(".", 2)
                key = f"blocks.{plan[int(j)]}.{suffix}"
            assert torch.equal(value, parent[key]), key


@pytest.mark.integration
def test_a_stage_opens_one_storage_client(prefect_harness, s3_env, tmp_path, monkeypatch):
    """Checkpoints, their progress and the tokenizer of a stage share one S3 client (three before)."""
    from tasks.store import storage

    opened, real = [], storage.s3_client
    monkeypatch.setattr(storage, "s3_client", lambda *a, **k: opened.append(1) or real(*a, **k))
    stages = "stages=[{n_layers: 2, steps: 2}, {n_layers: 4, steps: 1, growth: {operator: stack}}]"
    overrides = [stages, "checkpoint.every=1", "gate.enabled=false", f"storage.uri=s3://{s3_env}/run"]
    results = staged_training(load_config(SMOKE, overrides), str(tmp_path / "work"))
    assert [r.skipped for r in results] == [False, False] and len(opened) == 2
