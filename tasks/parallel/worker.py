"""One rank of a stage trained under torchrun: ``python -m tasks.parallel.worker JOB_DIR`` (see launch.py).

NCCL when the stage trains on CUDA (one GPU per rank, ``cuda:<LOCAL_RANK>``), gloo on CPU. A rank
that fails writes its one-line reason to ``JOB_DIR/error-<rank>.txt`` and exits 1; torchrun then
stops the others.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from models.plan import Hooks
from models.train import resolve_device
from tasks import driver
from tasks.parallel.launch import JOB, DDPJob, progress_writer, save_outputs
from tasks.store import CheckpointError, tokenizer_store


def main(job_dir: Path) -> int:
    job = DDPJob.model_validate_json((job_dir / JOB).read_text())
    rank = int(os.environ["RANK"])
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=f"[rank {rank}] %(message)s")
    try:
        cuda = resolve_device(job.spec.train.device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl" if cuda else "gloo")
        ws, parent = job.workspace, job.parent
        hooks = Hooks(on_step=progress_writer(job_dir))
        checkpoints = ws.checkpoints(job.spec, job.key)
        tok = tokenizer_store.get(ws.storage(), job.tokenizer_sha256) if job.tokenizer_sha256 else None
        run = driver.run(
            job.spec, ws.parent(parent) if parent else None, hooks=hooks, checkpoints=checkpoints, tokenizer=tok
        )
        if rank == 0:
            save_outputs(job_dir, run)
    except Exception as e:
        traceback.print_exc()
        known = isinstance(e, (driver.StageFailed, CheckpointError))  # their messages are one line and name the stage
        reason = str(e) if known else f"stage {job.spec.index}: rank {rank}: {type(e).__name__}: {e}"
        (job_dir / f"error-{rank}.txt").write_text(reason.split("\n")[0])
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
