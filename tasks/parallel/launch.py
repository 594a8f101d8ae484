"""Train one stage under torchrun (DistributedDataParallel), from the stage task's process.

    launch(job, on_step, log) -> driver.StageRun (model, TrainResult, checkpoint step resumed from or None)

The job (stage spec, parent ModelRef, Workspace, stage key) goes as JSON into a temporary directory,
then ``python -m torch.distributed.run --standalone --nproc_per_node=N -m tasks.parallel.worker DIR``
runs N ranks. Each builds or resumes the model with the stage driver, exactly as the single-process
path does (tasks/driver.py), and trains its slice of every global batch; rank 0 alone writes
checkpoints to storage, its progress to ``progress.json`` (polled here for the progress bar and
the Prefect artifact) and at the end the weights, AdamW moments and TrainResult into DIR. Only
the task process talks to the MLflow registry and to Prefect.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from models import arch
from models.plan import StepInfo
from models.train import TrainResult
from tasks.config import StageSpec
from tasks.driver import StageRun
from tasks.registry import ModelRef
from tasks.store import load_optimizer, load_state, save_model, save_optimizer
from tasks.workspace import Workspace

JOB, PROGRESS, RESULT, LOG = "job.json", "progress.json", "result.json", "torchrun.log"
ROOT = Path(__file__).resolve().parents[2]  # the ranks import this same checkout


class DDPJob(BaseModel):
    """What every rank reads: the same arguments run_stage has, and the stage key it computed."""

    spec: StageSpec
    parent: ModelRef | None
    workspace: Workspace
    key: str
    tokenizer_sha256: str | None = None  # the pipeline's tokenizer in storage (None: the byte vocabulary)


class TorchrunFailed(RuntimeError):
    """A rank failed; the message is one line (the rank's own error when it could write one)."""


def launch(job: DDPJob, on_step: Callable[[StepInfo], None], log) -> StageRun:
    n = job.spec.nproc
    with tempfile.TemporaryDirectory(prefix="staged-ddp-") as tmp:
        job_dir = Path(tmp)
        (job_dir / JOB).write_text(job.model_dump_json())
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={n}",
            "-m",
            "tasks.parallel.worker",
            tmp,
        ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        with open(job_dir / LOG, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
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
            tail = (job_dir / LOG).read_text(errors="replace").splitlines()[-40:]
            log.error("torchrun output (last lines):\n%s", "\n".join(tail))
            errors = sorted(job_dir.glob("error-*.txt"), key=lambda p: int(p.stem.split("-")[1]))
            default = f"stage {job.spec.index}: torchrun with {n} processes exited with code {proc.returncode}"
            raise TorchrunFailed(errors[0].read_text().strip() if errors else default)
        return load_outputs(job_dir)


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


def save_outputs(job_dir: Path, run: StageRun) -> None:
    """Rank 0, after the last step: weights + config, AdamW moments, and the rest of the TrainResult."""
    result = run.result
    save_model(run.model, job_dir)
    save_optimizer(result.moments, job_dir)
    meta = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name != "moments"}
    saved = {"result": meta, "resumed_from": run.resumed_from, "prepare_seconds": run.prepare_seconds}
    (job_dir / RESULT).write_text(json.dumps(saved))


def load_outputs(job_dir: Path) -> StageRun:
    cfg, state = load_state(job_dir, None)
    model = arch.build(cfg)
    arch.load_weights(model, state)
    saved = json.loads((job_dir / RESULT).read_text())
    meta = saved["result"]
    curves = {k: [tuple(p) for p in meta[k]] for k in ("train_curve", "val_curve")}
    result = TrainResult(**{**meta, **curves}, moments=load_optimizer(job_dir, None) or {})
    return StageRun(model, result, saved["resumed_from"], saved["prepare_seconds"])
