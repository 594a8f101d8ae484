"""Sharded stages (``stages.<i>.parallel: {strategy: fsdp, nproc: 2}``): FSDP2 under torchrun, gloo on CPU.

Each end-to-end test runs real torchrun subprocesses (2 ranks, ~15-20 s a stage on 2 cores, mostly
imports). One process is the reference; the 2-rank run must match it within ATOL.
"""

import json
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from repo import REPO_ROOT
from safetensors.torch import load_file

from flows.staged import staged_training
from tasks import driver
from tasks.config import ConfigError, load_config, spec_hash
from tasks.registry import Registry
from tasks.store import LocalStorage
from tasks.workspace import Workspace

SMOKE = REPO_ROOT / "configs" / "smoke.yaml"
# stage 2 carries stage 1's Adam moments across growth: under FSDP they go out whole and come back sharded
SHORT = ["stages.0.steps=6", "stages.1.steps=4", "stages.2.steps=2", "checkpoint.every=2"]
SHORT += ["stages.1.optimizer.state=transfer"]
FSDP = "{strategy: fsdp, nproc: 2}"
# As for DDP (tests/flows/test_ddp.py): two ranks sum two half-batch gradients (reduce-scatter) where one
# process takes one mean, and the clip norm is a sum of two partial norms: the same numbers in another
# float32 order, which AdamW's 1/sqrt(v) lets grow where a gradient is near zero. Measured at most
# 1.0e-6 (stage 1), 5.1e-6 (stage 2) and 3.7e-5 (stage 3, grown from stage 2's weights) on this CPU.
# A real mistake (a wrong slice, gradients not averaged) moves weights by ~lr = 3e-3 per step.
ATOL = 1e-4


def test_fsdp_is_not_in_the_stage_key_and_checks_its_world():
    fsdp = load_config(SMOKE, [f"stages.1.parallel={FSDP}"]).stage_specs()
    single = load_config(SMOKE).stage_specs()
    assert fsdp[1].parallel.strategy == "fsdp" and fsdp[1].parallel.world_size == 2
    assert spec_hash(fsdp[1]) == spec_hash(single[1])  # a checkpoint of either resumes either
    shorthand = load_config(SMOKE, ["stages.1.nproc=2"]).stage_specs()[1].parallel
    assert (shorthand.strategy, shorthand.nproc) == ("ddp", 2)
    cases = {
        "stages.0.parallel={strategy: fsdp, nproc: 1}": "strategy fsdp with 1 process shards nothing",
        "stages.0.parallel={nproc: 1, nnodes: 2}": "nnodes 2 needs rdzv_endpoint",
        "stages.0.parallel={nproc: 3}": "train.batch_size 8 is not divisible by nproc 3",
        "stages.0.parallel={nproc: 2, nnodes: 3, rdzv_endpoint: 'h:1'}": "not divisible by nproc x nnodes = 6",
        "stages.0.parallel={nproc: 2, nnodes: 2, rdzv_endpoint: '0.0.0.0:29400'}": "would listen on every interface",
        "stages.0.parallel={nproc: 2, nnodes: 2, rdzv_endpoint: 'node0'}": "is not host:port",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_config(SMOKE, [override])
    with pytest.raises(ConfigError, match="set parallel.nproc, not both nproc and parallel"):
        load_config(SMOKE, ["stages.0.nproc=2", f"stages.0.parallel={FSDP}"])


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


def weights_by_stage(workdir: Path, dst: Path) -> dict[str, dict[str, torch.Tensor]]:
    registry = Registry.resolve(workdir)
    out = {}
    for v in registry.client().search_model_versions("name = 'staged-smoke'"):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=v.source, dst_path=str(dst / str(v.version)), tracking_uri=registry.tracking_uri
        )
        out[v.tags["stage"]] = load_file(Path(local) / "model.safetensors")
    return out


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.integration
def test_fsdp_stages_match_one_process_and_resume_across_world_sizes(single, workdir, tmp_path):
    """Stage 1 resumes under FSDP (2 ranks) from the one-process run's whole checkpoint at step 4;
    stage 2 grows from it, with its Adam moments, and trains under FSDP, writing sharded checkpoints;
    then one process resumes stage 2 from the 2-rank sharded checkpoint at step 2."""
    single_dir, single_results = single
    key1 = single_results[0].ref.stage_key  # stage 1's key is the one-process run's: parallel is not part of it
    step4 = Path("checkpoints") / key1 / "step-00000004"
    shutil.copytree(single_dir / step4, workdir / step4)
    config = load_config(SMOKE, SHORT + [f"stages.0.parallel={FSDP}", f"stages.1.parallel={FSDP}"])
    results = staged_training(config, str(workdir))
    assert [r.resumed_from for r in results] == [4, None, None]
    ours, theirs = weights_by_stage(workdir, tmp_path / "fsdp"), weights_by_stage(single_dir, tmp_path / "one")
    for stage in "123":
        difference = max_difference(ours[stage], theirs[stage])
        print(f"stage {stage}: max |fsdp - one process| = {difference:.2e}")
        assert difference <= ATOL, stage
    for r, s in zip(results, single_results):
        assert r.val_loss == pytest.approx(s.val_loss, abs=ATOL)  # evaluated on every rank

    key2 = results[1].ref.stage_key  # stage 2's key names its parent's weights: the 2-rank stage 1
    sharded = workdir / "checkpoints" / key2 / "step-00000002"
    manifest = json.loads((sharded / "manifest.json").read_text())
    assert manifest["format"] == 2 and manifest["world_size"] == 2
    shards = sorted(n for n in manifest["files"] if n.startswith("shard-"))
    assert shards == ["shard-00001-model-00001-of-00001.safetensors", "shard-00002-model-00001-of-00001.safetensors"]
    half = load_file(sharded / shards[0])  # rank 0 holds the first half of each matrix's rows
    assert half["model.head.weight"].shape == (128, 32) and half["exp_avg.head.weight"].shape == (128, 32)

    # a different world size: one process resumes stage 2 from the 2-rank checkpoint at step 2 (DCP reshards)
    copy = tmp_path / "step-2-only"
    shutil.copytree(sharded, copy / key2 / "step-00000002")
    spec = load_config(SMOKE, SHORT).stage_specs()[1]
    parent = Workspace.resolve(workdir).parent(results[0].ref)
    run = driver.run(spec, parent, checkpoints=driver.Checkpoints(LocalStorage(copy), key2, every=0, keep=2))
    assert run.resumed_from == 2 and run.result.world_size == 1
    difference = max_difference(dict(run.model.state_dict()), ours["2"])
    print(f"stage 2 resumed by one process from 2 ranks' step 2: max |difference| = {difference:.2e}")
    assert difference <= ATOL


@pytest.mark.integration
def test_sharded_checkpoints_on_s3_each_rank_uploads_and_reads_back_its_shards(prefect_harness, s3_env, tmp_path):
    """DCP writes to a file system: each rank writes locally, then uploads its own files to the bucket
    (moto's HTTP S3); a second pipeline with a fresh registry finds the stage's checkpoint there and
    resumes from it (the last step: nothing left to train), registering the very same weights."""
    from tasks.store import s3_client

    bucket = s3_env
    overrides = ["stages=[{n_layers: 3, steps: 4}]", "checkpoint.every=2", f"stages.0.parallel={FSDP}"]
    overrides.append(f"storage.uri=s3://{bucket}/run")
    first = staged_training(load_config(SMOKE, overrides), str(tmp_path / "first"))
    key = first[0].ref.stage_key
    listed = s3_client().list_objects_v2(Bucket=bucket, Prefix=f"run/checkpoints/{key}/")["Contents"]
    names = sorted(o["Key"].split("/", 3)[3] for o in listed)
    step4 = [n.split("/", 1)[1] for n in names if n.startswith("step-00000004/")]
    assert step4 == [
        "manifest.json",
        "rng.safetensors",
        "shard-00001-model-00001-of-00001.safetensors",
        "shard-00002-model-00001-of-00001.safetensors",
        "state.json",
    ]
    manifest = json.loads(
        s3_client().get_object(Bucket=bucket, Key=f"run/checkpoints/{key}/step-00000004/manifest.json")["Body"].read()
    )
    assert manifest["format"] == 2 and set(manifest["files"]) == set(step4) - {"manifest.json"}

    second = staged_training(load_config(SMOKE, overrides), str(tmp_path / "second"))
    assert second[0].resumed_from == 4 and second[0].ref.stage_key == key
    assert second[0].ref.weights_sha256 == first[0].ref.weights_sha256
