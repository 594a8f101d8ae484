"""Data-parallel stages (``stages.<i>.nproc > 1``): torchrun + DistributedDataParallel, gloo on CPU.

The end-to-end tests start real torchrun subprocesses (~10-15 s each on 2 cores, mostly imports).
"""

import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from repo import REPO_ROOT
from safetensors.torch import load_file

from flows.staged import staged_training
from models.data.bytes import ByteCorpus, DataConfig
from tasks.config import ConfigError, load_config, spec_hash
from tasks.registry import Registry

SMOKE = REPO_ROOT / "configs" / "smoke.yaml"
SHORT = ["stages.0.steps=6", "stages.1.steps=4", "stages.2.steps=2", "checkpoint.every=2"]
# Two ranks average two half-batch gradients where one process takes one mean over the whole
# batch: the same sum in another float32 order (~1e-7 relative). AdamW divides each update by
# sqrt(v), which lets such differences grow where a gradient is near zero: measured 4e-6 at most
# after these few steps. A real mistake (a wrong data slice, gradients not all-reduced) moves
# weights by about lr = 3e-3 per step: measured 1.6e-2 with the all-reduce removed.
ATOL = 1e-4


def test_rank_slices_partition_the_global_batch():
    corpus = ByteCorpus(DataConfig(max_bytes=200_000), context=16, seed=0)
    for cursor in (0, 5, corpus.n_train - 3):  # the last one crosses into the next epoch
        x, y = corpus.batch(cursor, 12)
        for world in (2, 3, 4):
            slices = [corpus.batch(cursor, 12, rank, world) for rank in range(world)]
            assert all(len(sx) == 12 // world for sx, _ in slices)
            assert torch.equal(torch.cat([sx for sx, _ in slices]), x)
            assert torch.equal(torch.cat([sy for _, sy in slices]), y)
    with pytest.raises(ValueError, match="not divisible by 5"):
        corpus.batch(0, 12, 0, 5)


def test_nproc_must_divide_the_global_batch_and_leaves_the_stage_key_alone():
    expected = r"^invalid config: stages\.1: train\.batch_size 8 is not divisible by nproc 3$"
    with pytest.raises(ConfigError, match=expected):
        load_config(SMOKE, ["stages.1.nproc=3"])
    spread, single = load_config(SMOKE, ["stages.1.nproc=2"]).stage_specs(), load_config(SMOKE).stage_specs()
    assert spread[1].parallel.nproc == 2 and spread[1].train.batch_size == 8  # the global batch
    assert spec_hash(spread[1]) == spec_hash(single[1])  # same weights: a checkpoint of either resumes either


@pytest.fixture(autouse=True)
def _one_thread_per_rank(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torchrun's ranks inherit it


@pytest.fixture(scope="module")
def single(prefect_harness, tmp_path_factory):
    """The same pipeline in one process: the workdir and its results."""
    workdir = tmp_path_factory.mktemp("single")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        return workdir, staged_training(load_config(SMOKE, SHORT), str(workdir))


def _versions(workdir: Path):
    registry = Registry.resolve(workdir)
    client = registry.client()
    return registry, client, sorted(client.search_model_versions("name = 'staged-smoke'"), key=lambda v: int(v.version))


def _weights(registry: Registry, version, dst: Path) -> dict[str, torch.Tensor]:
    uri, tracking = version.source, registry.tracking_uri
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking)
    return load_file(Path(local) / "model.safetensors")


@pytest.mark.integration
def test_stages_under_torchrun_match_a_single_process_run(single, workdir, tmp_path, monkeypatch):
    """Stage 1 resumes under nproc=2 from a checkpoint an interrupted attempt left (step 4 of 6);
    stage 2 grows and trains under nproc=2 from the start; stage 3 runs in the task process.
    A torchrun stage's version is written once, by rank 0: the task registers it without writing it."""
    import tasks.version

    single_dir, single_results = single
    key = single_results[0].ref.stage_key  # nproc is not in the stage key
    shutil.copytree(single_dir / "checkpoints" / key / "step-00000004", workdir / "checkpoints" / key / "step-00000004")
    config = load_config(SMOKE, SHORT + ["stages.0.nproc=2", "stages.1.nproc=2"])
    written, save = [], tasks.version.save_model
    monkeypatch.setattr(tasks.version, "save_model", lambda model, *a, **k: written.append(1) or save(model, *a, **k))
    state = staged_training(config, str(workdir), return_state=True)
    results = state.result()
    assert [r.resumed_from for r in results] == [4, None, None]
    assert len(written) == 1  # stage 3's, in this process; stages 1 and 2 were written by their rank 0

    registry, client, versions = _versions(workdir)
    single_store, _, single_versions = _versions(single_dir)
    assert [v.tags["stage"] for v in versions] == ["1", "2", "3"]  # exactly one version per stage
    assert [client.get_run(v.run_id).data.params["nproc"] for v in versions] == ["2", "2", "1"]  # ranks that trained it
    for v, s in zip(versions, single_versions):  # lineage as usual, the same data cursor and step count
        for tag in ("n_layers", "parent_version", "growth", "data_cursor", "global_step", "config_hash"):
            assert v.tags[tag] == s.tags[tag], tag
    for v, s, r, sr in zip(versions[:2], single_versions, results, single_results):
        ours = _weights(registry, v, tmp_path / "ddp" / str(v.version))
        theirs = _weights(single_store, s, tmp_path / "one" / str(s.version))
        assert ours.keys() == theirs.keys()
        for name in ours:
            where = f"stage {v.tags['stage']}: {name}"
            torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=ATOL, msg=where)
        assert r.val_loss == pytest.approx(sr.val_loss, abs=ATOL)  # the rank-0 evaluation every rank saw
        assert [loss for _, loss in r.train_curve] == pytest.approx([loss for _, loss in sr.train_curve], abs=ATOL)

    with get_client(sync_client=True) as prefect:  # the ranks' progress reached the task's progress artifacts
        flow_run = ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
        artifacts = prefect.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=flow_run))
    progress = [a for a in artifacts if a.type == "progress"]
    assert sorted(float(a.data) for a in progress) == [100.0] * 3


@pytest.mark.integration
def test_a_failing_rank_fails_the_stage_with_one_line(prefect_harness, workdir):
    overrides = [
        "checkpoint.every=1",
        "stages.0.steps=4",
        "stages.0.nproc=2",
        "stages.0.train.lr=1e30",
        "stages.0.train.grad_clip=1e30",
        "stages.0.train.warmup_steps=0",
    ]
    state = staged_training(load_config(SMOKE, overrides), str(workdir), return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert message.startswith("stage 1: loss is ")
    assert message.endswith(" at step 2; stopped, last good checkpoint: step 1")
    assert "\n" not in message
    assert _versions(workdir)[2] == []


@pytest.mark.integration
def test_a_users_mistake_in_a_rank_fails_the_stage_once_without_a_retry(prefect_harness, workdir):
    """A parent whose weights were changed after registration is refused by the ranks that load it: the stage
    fails as a user error (exit 2 on the command line) and Prefect does not launch torchrun again."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from models.errors import UserError
    from tasks.registry import get_version
    from tasks.store import local_dir

    first = ["stages.0.steps=2", "gate.enabled=false"]
    staged_training(load_config(SMOKE, [*first, "stages.1.steps=0", "stages.2.steps=0"]), str(workdir))
    client = Registry.resolve(workdir).client()
    parent = local_dir(get_version(client, "staged-smoke", "2").source)
    weights = parent / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")  # same size, other bytes
    overrides = [*first, "stages.1.steps=0", "stages.2.steps=2", "stages.2.nproc=2", "retry.retries=1"]
    state = staged_training(load_config(SMOKE, [*overrides, "retry.delay_s=0"]), str(workdir), return_state=True)
    error = state.result(raise_on_failure=False)
    assert state.is_failed() and isinstance(error, UserError), error
    assert str(error).startswith("stage 3: rank 0: IntegrityError:") and "model.safetensors" in str(error)
    with get_client(sync_client=True) as prefect:
        runs = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    assert [r.run_count for r in runs if r.name.startswith("stage-3")] == [1]
