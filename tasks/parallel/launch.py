"""Train one stage under torchrun (DDP or FSDP2), from the stage task's process.

    launch(job, on_step, log) -> Trained (TrainResult, checkpoint step resumed from or None, the written Version)

The StageJob (stage spec, parent ModelRef, Workspace, stage key, tokenizer, output) goes as JSON into a
temporary directory,
then torchrun (``python -m tasks.parallel.rendezvous``: torch's c10d rendezvous, bound to its
endpoint's address) runs ``nproc`` ranks of ``tasks.parallel.worker DIR`` on this node. One node: the
endpoint is ``127.0.0.1:<free port>``. ``nnodes`` > 1: this node hosts the rendezvous on
``parallel.rdzv_endpoint`` and waits for the other nodes, each running ``python -m tasks.parallel.follow``
with the same endpoint (on Kubernetes: the other pods of deploy/work-pools/kubernetes-multinode.json).

Each rank builds or resumes the model with the stage driver, exactly as the single-process path does
(tasks/driver.py), and trains its slice of every global batch; checkpoints go to storage (rank 0's
under DDP, every rank's shards under FSDP); rank 0 writes its progress to ``progress.json`` (polled
here for the progress bar and the Prefect artifact); at the end it writes the registrable version directory
into ``job.output`` once (tasks/version.py: the task registers it as it is, reloading nothing) and the
TrainResult into DIR. Only the task process talks to the MLflow registry and to Prefect.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from models.train.loop import TrainResult
from models.train.plan import StepInfo
from tasks.config import ParallelConfig
from tasks.version import Trained, Version
from tasks.workspace import StageJob

JOB, PROGRESS, RESULT, LOG = "job.json", "progress.json", "result.json", "torchrun.log"
ROOT = Path(__file__).resolve().parents[2]  # the ranks import this same checkout
# One rendezvous at a time per endpoint (each stage's torchrun hosts a fresh store), so a fixed id
# lets nodes that know nothing of the stage (tasks.parallel.follow) join it.
RDZV_ID = os.environ.get("STAGED_RDZV_ID", "staged")


def torchrun_command(parallel: ParallelConfig, job_dir: str) -> list[str]:
    """This node's torchrun: one node on 127.0.0.1, or one of ``nnodes`` around ``rdzv_endpoint``.

    ``STAGED_NODE_ADDR`` (on Kubernetes the pod's IP) is the address this node's rank 0 serves the
    process group's store on; unset, torch uses the host's fully qualified name. ``STAGED_RDZV_ENDPOINT``
    replaces the config's endpoint where only the deployment knows it (a Kubernetes Job's generated name).
    """
    alone = parallel.nnodes == 1
    endpoint = "127.0.0.1:0" if alone else os.environ.get("STAGED_RDZV_ENDPOINT") or parallel.rdzv_endpoint
    addr = "127.0.0.1" if alone else os.environ.get("STAGED_NODE_ADDR")
    return [
        sys.executable,
        "-m",
        "tasks.parallel.rendezvous",
        f"--nnodes={parallel.nnodes}",
        f"--nproc-per-node={parallel.nproc}",
        "--rdzv-backend=staged-c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={RDZV_ID}",
        *([f"--local-addr={addr}"] if addr else []),
        "--max-restarts=0",
        "-m",
        "tasks.parallel.worker",
        job_dir,
    ]


def ranks_env() -> dict[str, str]:
    """The environment of the ranks: this one, with this checkout first on PYTHONPATH."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


class TorchrunFailed(RuntimeError):
    """A rank failed; the message is one line (the rank's own error when it could write one). ``user``: the
    first rank's error was a user's mistake (models/errors.py), which a retry would repeat."""

    def __init__(self, message: str, user: bool = False):
        super().__init__(message)
        self.user = user


def launch(job: StageJob, on_step: Callable[[StepInfo], None], log) -> Trained:
    parallel = job.spec.parallel
    with tempfile.TemporaryDirectory(prefix="staged-torchrun-") as tmp:
        job_dir = Path(tmp)
        (job_dir / JOB).write_text(job.model_dump_json())
        cmd = torchrun_command(parallel, tmp)
        with open(job_dir / LOG, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=ranks_env())
            try:
                reported, exited = 0, False
                while not exited:
                    exited = _wait(proc, 0.5)
                    if (info := _read_progress(job_dir)) is not None and info.step > reported:
                        on_step(info)
                        reported = info.step
            finally:
                if proc.poll() is None:  # interrupted here: stop the ranks too
                    proc.terminate()
                    proc.wait()
        if proc.returncode != 0:
            output = (job_dir / LOG).read_text(errors="replace")
            log.error("torchrun output (last lines):\n%s", "\n".join(output.splitlines()[-60:]))
            reason = _reason(job, job_dir, output, proc.returncode)
            raise TorchrunFailed(reason, user=any(job_dir.glob("user-error-*")))
        return load_outputs(job_dir)


_FAILURE = re.compile(r"\brank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)


def _killed(job_dir: Path, output: str) -> tuple[str, int] | None:
    """The rank a signal killed with no reason of its own: torchrun's root cause if so, else any failed rank
    killed by another signal than the SIGTERM torchrun stops the others with. A killed rank's peers may fail
    first (a gloo read on a reset connection), and torchrun then names one of them as the root cause."""
    report = output[max(output.rfind("ChildFailedError"), 0) :]
    root = report.find("Root Cause")
    failures = [(m[1], int(m[2]), m.start() > root >= 0) for m in _FAILURE.finditer(report)]
    silent = [(r, c, is_root) for r, c, is_root in failures if c < 0 and not (job_dir / f"error-{r}.txt").is_file()]
    roots = [(r, c) for r, c, is_root in silent if is_root]
    others = [(r, c) for r, c, is_root in silent if -c != signal.SIGTERM]
    return (roots or others or [None])[0]


def _reason(job: StageJob, job_dir: Path, output: str, code: int) -> str:
    """One line: a rank killed by a signal (with no reason of its own), else the lowest rank's own reason,
    else torchrun's exit code."""
    where = f"stage {job.spec.index}: "
    if (killed := _killed(job_dir, output)) is not None:
        rank, sig = killed
        name = signal.Signals(-sig).name if -sig in signal.valid_signals() else str(sig)
        return f"{where}rank {rank} was killed by {name}; torchrun stopped the others"
    errors = sorted(job_dir.glob("error-*.txt"), key=lambda p: int(p.stem.split("-")[1]))
    if errors:
        return errors[0].read_text().strip()
    p = job.spec.parallel
    return f"{where}{p.strategy} torchrun with {p.world_size} processes exited with code {code}"


def _wait(proc: subprocess.Popen, seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def progress_writer(job_dir: Path) -> Callable[[StepInfo], None]:
    """Rank 0's on_step: the latest StepInfo, replaced atomically."""

    def write(info: StepInfo) -> None:
        tmp = job_dir / f"{PROGRESS}.partial"
        tmp.write_text(json.dumps(dataclasses.asdict(info)))
        os.replace(tmp, job_dir / PROGRESS)

    return write


def _read_progress(job_dir: Path) -> StepInfo | None:
    path = job_dir / PROGRESS
    return StepInfo(**json.loads(path.read_text())) if path.is_file() else None


def save_outputs(job_dir: Path, trained: Trained) -> None:
    """Rank 0, once the version is written (``job.output``): the TrainResult (its moments are in the version)
    and what the version holds."""
    result = trained.result
    meta = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name != "moments"}
    saved = {"result": meta, "resumed_from": trained.resumed_from, "version": trained.version.model_dump(mode="json")}
    (job_dir / RESULT).write_text(json.dumps(saved))


def load_outputs(job_dir: Path) -> Trained:
    """The stage as rank 0 left it: nothing of the model is read back (its version is written)."""
    saved = json.loads((job_dir / RESULT).read_text())
    meta = saved["result"]
    curves = {k: [tuple(p) for p in meta[k]] for k in ("train_curve", "val_curve")}
    result = TrainResult(**{**meta, **curves}, moments={})
    return Trained(result, saved["resumed_from"], Version.model_validate(saved["version"]))
