"""Checkpoints on local disk and on a real (local, HTTP) S3 endpoint: atomic, verified, pruned."""

import http.server
import json
import logging
import threading

import pytest
import torch

from models.families.gpt import GPT, GPTConfig
from models.train.loop import rng_state
from models.train.plan import TrainState
from tasks.store import LocalStorage, S3Storage, StorageError, check_uri, checkpoint, open_storage

CFG = GPTConfig(n_layers=1, d_model=16, n_heads=2, d_ff=32, context=8)
KEY = "k" * 64


def _state(step: int) -> TrainState:
    return TrainState(
        step=step,
        cursor=8 * step,
        moments={"step": torch.tensor(float(step), dtype=torch.float64)},
        rng=rng_state(),
        val_loss_init=5.0,
        val_loss=4.0,
        train_curve=[(1, 5.5)],
        val_curve=[(0, 5.0)],
    )


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "ckpt")
    bucket = request.getfixturevalue("s3_env")
    return open_storage(f"s3://{bucket}/run/checkpoints")


def test_round_trip_restores_weights_and_every_rng(storage):
    model = GPT(CFG)
    state = _state(3)
    checkpoint.save(storage, KEY, model, state)
    found = checkpoint.latest(storage, KEY)
    assert found.step == 3 and found.state.cursor == 24 and found.state.train_curve == [(1, 5.5)]
    assert all(torch.equal(v, found.weights[k]) for k, v in model.state_dict().items())
    assert torch.equal(found.state.rng["torch"], state.rng["torch"])
    assert found.state.rng["python"] == state.rng["python"]
    assert (found.state.rng["numpy"][1] == state.rng["numpy"][1]).all() and found.state.rng["numpy"][2] == state.rng[
        "numpy"
    ][2]


def test_corrupt_and_partial_checkpoints_are_skipped_with_a_warning(storage, caplog):
    model = GPT(CFG)
    for step in (2, 4, 6):
        checkpoint.save(storage, KEY, model, _state(step))
    storage.put(f"{KEY}/step-00000006/model.safetensors", b"garbage")  # corrupt newest
    storage.delete([f"{KEY}/step-00000004/manifest.json"])  # partial: its writer died before the manifest
    with caplog.at_level(logging.WARNING):
        assert checkpoint.latest(storage, KEY).step == 2
    assert "step-00000006 is corrupt" in caplog.text and "step-00000004 is partial" in caplog.text


def test_prune_keeps_the_newest_n(storage):
    model = GPT(CFG)
    for step in (1, 2, 3, 4):
        checkpoint.save(storage, KEY, model, _state(step))
        checkpoint.prune(storage, KEY, keep=2)
    assert checkpoint.steps(storage, KEY) == [3, 4]
    assert checkpoint.latest(storage, KEY).step == 4


def test_prune_never_deletes_the_step_just_written_for_a_corrupt_newer_one(storage):
    """The issue's case: a corrupt step 150 (left by an earlier attempt) beside a freshly written valid step 50,
    keep=1. Counting manifests would keep 150 and delete 50, the only good one; validity decides instead."""
    model = GPT(CFG)
    checkpoint.save(storage, KEY, model, _state(150))
    storage.put(f"{KEY}/step-00000150/optimizer.safetensors", b"garbage")  # corrupt, manifest still there
    checkpoint.save(storage, KEY, model, _state(50))
    deleted = checkpoint.prune(storage, KEY, keep=1, written=50)
    assert deleted == [150]
    assert checkpoint.steps(storage, KEY) == [50] and checkpoint.latest(storage, KEY).step == 50


def test_prune_deletes_invalid_steps_first_and_keeps_valid_ones(storage):
    model = GPT(CFG)
    for step in (10, 20, 30):
        checkpoint.save(storage, KEY, model, _state(step))
    storage.delete([f"{KEY}/step-00000030/manifest.json"])  # partial
    checkpoint.save(storage, KEY, model, _state(40))
    assert checkpoint.prune(storage, KEY, keep=2, written=40) == [30, 10]
    assert checkpoint.steps(storage, KEY) == [20, 40]


def test_two_writers_of_one_key_never_share_a_temporary_file(tmp_path):
    """Two processes training the same stage key write the same checkpoint names: each writes its own
    temporary file, so the file that lands is one writer's whole bytes, never an interleaving."""
    storage = LocalStorage(tmp_path / "ckpt")
    payloads = [bytes([i]) * 4_000_000 for i in (1, 2)]
    threads = [threading.Thread(target=storage.put, args=("k/step-1/model.safetensors", p)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert storage.get("k/step-1/model.safetensors") in payloads
    assert [p.name for p in (tmp_path / "ckpt" / "k" / "step-1").iterdir()] == ["model.safetensors"]


def test_disk_full_while_checkpointing_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    """/dev/full makes the kernel answer ENOSPC, as a full disk does, for the new checkpoint's weights
    (the writer's random temporary-name suffix is fixed so that the test can put /dev/full there)."""
    import os

    import tasks.store.storage as storage_module

    monkeypatch.setattr(storage_module.secrets, "token_hex", lambda n: "fixed")
    storage = LocalStorage(tmp_path / "ckpt")
    model = GPT(CFG)
    checkpoint.save(storage, KEY, model, _state(5))
    target = tmp_path / "ckpt" / KEY / "step-00000010"
    target.mkdir()
    partial = target / f"model.safetensors.{os.getpid()}-fixed.partial"
    partial.symlink_to("/dev/full")
    with pytest.raises(
        checkpoint.CheckpointError,
        match=r"step 10 not written \(No space left on device\); checkpoint step 5 is intact",
    ):
        checkpoint.save(storage, KEY, model, _state(10))
    assert not partial.exists()
    assert checkpoint.latest(storage, KEY).step == 5


def test_storage_uris_are_validated():
    assert check_uri("s3://my-bucket/runs/a") and check_uri("/tmp/x") and check_uri("file:///tmp/x")
    for bad, message in [
        ("s3:///x", "valid bucket name"),
        ("s3://Bad_Bucket/x", "valid bucket name"),
        ("gs://b/x", "unsupported scheme"),
        ("s3://AKIA:secret@bucket/x", "credentials do not belong"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_uri(bad)


def test_unreachable_s3_is_retried_then_one_line_naming_the_endpoint(monkeypatch):
    from conftest import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(StorageError) as err:
        S3Storage("s3://bucket/p", max_attempts=2).put("a", b"x")
    assert endpoint in str(err.value) and "\n" not in str(err.value)


class _Always503(http.server.BaseHTTPRequestHandler):
    hits = 0

    def _answer(self):
        type(self).hits += 1
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = do_HEAD = do_POST = _answer

    def log_message(self, *args):
        pass


def test_s3_5xx_is_retried_by_botocore_then_fails_in_one_line(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Always503)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    for k, v in {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    try:
        with pytest.raises(StorageError) as err:
            S3Storage("s3://bucket/p", max_attempts=3).get("a")
    finally:
        server.shutdown()
    assert _Always503.hits == 3  # total_max_attempts=3: botocore's standard retry mode, not a loop of ours
    assert endpoint in str(err.value) and "\n" not in str(err.value)


def test_manifest_lists_every_file_with_its_sha256(tmp_path):
    storage = LocalStorage(tmp_path)
    checkpoint.save(storage, KEY, GPT(CFG), _state(1))
    manifest = json.loads(storage.get(f"{KEY}/step-00000001/manifest.json"))
    assert sorted(manifest["files"]) == ["model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]
