"""Two nodes on one machine: the stage task's torchrun and a follower (``python -m tasks.parallel.follow``)
meet at a c10d rendezvous on 127.0.0.1, train one FSDP stage as 2 ranks, and listen on no wildcard address."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import free_port
from repo import REPO_ROOT
from test_fsdp import ATOL, SMOKE, max_difference, weights_by_stage

from flows.staged import staged_training
from tasks.config import load_config

pytestmark = pytest.mark.integration
ROOT = REPO_ROOT
ONE_STAGE = ["stages=[{n_layers: 3, steps: 6}]", "checkpoint.every=2"]


def _listening() -> dict[int, str]:
    """Socket inode -> local address of every listening TCP socket on the machine."""
    out = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(path).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                out[int(fields[9])] = fields[1]
    return out


def _ours() -> dict[int, str]:
    """Socket inode -> command line, for every process of the ranks, launchers and followers."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "tasks.parallel" not in cmd:
                continue
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    found[int(target[8:-1])] = cmd
        except OSError:  # the process ended while we looked
            continue
    return found


def _wildcard(address: str) -> bool:
    host = address.split(":")[0]
    return set(host) == {"0"}  # 00000000 (0.0.0.0) or 32 zeros ([::])


@pytest.fixture(scope="module")
def single_stage(prefect_harness, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one-node")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        staged_training(load_config(SMOKE, ONE_STAGE), str(workdir))
    return workdir


def test_two_launchers_on_loopback_train_one_stage_and_bind_no_wildcard(single_stage, workdir, tmp_path, monkeypatch):
    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("STAGED_NODE_ADDR", "127.0.0.1")  # the address each node's rank 0 serves the group on
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tasks.parallel.follow",
            "--nnodes=2",
            "--nproc-per-node=1",
            f"--rdzv-endpoint={endpoint}",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    seen: dict[int, tuple[str, str]] = {}  # inode -> (address, command line), sampled while it runs
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            listening, ours = _listening(), _ours()
            seen.update({i: (listening[i], ours[i]) for i in ours.keys() & listening.keys()})
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        parallel = f"stages.0.parallel={{strategy: fsdp, nproc: 1, nnodes: 2, rdzv_endpoint: '{endpoint}'}}"
        results = staged_training(load_config(SMOKE, ONE_STAGE + [parallel]), str(workdir))
        out, _ = follower.communicate(timeout=120)
    finally:
        done.set()
        sampler.join()
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, out.decode(errors="replace")[-3000:]
    difference = max_difference(
        weights_by_stage(workdir, tmp_path / "two")["1"], weights_by_stage(single_stage, tmp_path / "one")["1"]
    )
    print(f"2 nodes x 1 rank vs one process: max |difference| = {difference:.2e}")
    assert difference <= ATOL and results[0].steps == 6

    print("listening sockets of the launchers and ranks:", sorted({a for a, _ in seen.values()}))
    rendezvous = f"0100007F:{port:04X}"  # 127.0.0.1:<port> in /proc/net/tcp's notation
    assert any(address == rendezvous for address, _ in seen.values()), "the rendezvous store was never seen"
    assert len(seen) >= 3  # the rendezvous store, the group's store, gloo's pairs
    wildcards = [(a, cmd) for a, cmd in seen.values() if _wildcard(a)]
    assert not wildcards, wildcards
