"""One rank of a stage trained under torchrun: ``python -m tasks.parallel.worker JOB_DIR`` (see launch.py).

NCCL when the stage trains on CUDA (one GPU per rank, ``cuda:<LOCAL_RANK>``), gloo on CPU. The
process group's store is rank 0's, bound to ``MASTER_ADDR`` only (tasks/parallel/rendezvous.py).

The stage task's node has the job in ``JOB_DIR/job.json``; other nodes (``tasks.parallel.follow``)
start with an empty ``JOB_DIR``. Ranks are renumbered so the task's node holds ranks 0..nproc-1
(torch's rendezvous orders nodes by address), rank 0 sends the job to every rank, and at the end
writes the weights (gathered from the shards under FSDP), AdamW moments and TrainResult into its
JOB_DIR. A rank that fails writes its one-line reason to ``JOB_DIR/error-<rank>.txt`` and exits 1;
torchrun then stops the others. Every rank ends through ``models.train.parallel.end_rank`` (no interpreter
teardown: the gloo group outlives ``destroy_process_group`` under FSDP2 and its teardown can abort).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from models.data.corpus import open_corpus
from models.errors import UserError
from models.families.lookup import family_of
from models.train.loop import resolve_device
from models.train.parallel import end_rank, full_state, gather_json, is_sharded
from models.train.plan import Hooks
from tasks import driver
from tasks.parallel.launch import JOB, progress_writer, save_outputs
from tasks.parallel.rendezvous import bound_store
from tasks.store import CheckpointError, tokenizer_store
from tasks.version import write_version
from tasks.workspace import StageJob


def _init(backend: str, has_job: bool) -> None:
    """The process group on a bound store, renumbered so that the ranks that have the job come first."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    store = bound_store(host, port, is_master=rank == 0, world_size=world)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world)
    flags = gather_json(has_job)
    order = sorted(range(world), key=lambda r: (not flags[r], r))  # the task's node first, stable
    if order != list(range(world)):
        dist.destroy_process_group()
        renumbered = dist.PrefixStore("staged-leader-first", store)
        dist.init_process_group(backend, store=renumbered, rank=order.index(rank), world_size=world)


def _job(job_dir: Path) -> StageJob:
    """The job, read by the ranks that have it and sent by rank 0 to those that do not."""
    mine = (job_dir / JOB).read_text() if (job_dir / JOB).is_file() else None
    return StageJob.model_validate_json(gather_json(mine)[0])


def _gathered(run: driver.StageRun, spec) -> driver.StageRun:
    """Under FSDP: the whole model on rank 0 (gathered from every rank's shards; collective)."""
    if not is_sharded(run.model):
        return run
    state = full_state(run.model)
    if dist.get_rank() != 0:
        return run
    return dataclasses.replace(run, model=family_of(spec.model).from_state(spec.model, state))


def main(job_dir: Path) -> int:
    rank, where = int(os.environ["RANK"]), ""
    has_job = (job_dir / JOB).is_file()
    try:
        device = json.loads((job_dir / JOB).read_text())["spec"]["train"]["device"] if has_job else "auto"
        cuda = resolve_device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        _init("nccl" if cuda else "gloo", has_job)
        rank = dist.get_rank()
        logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=f"[rank {rank}] %(message)s")
        job = _job(job_dir)
        where = f"stage {job.spec.index}: "
        ws, spec = job.workspace, job.spec
        hooks = Hooks(on_step=progress_writer(job_dir))
        storage = ws.storage()  # one client for this rank: its checkpoints and the tokenizer
        vocabulary = tokenizer_store.get(storage, job.tokenizer_sha256)
        parent = ws.parent(job.parent) if job.parent else None
        origin = parent.origin if parent else None
        # the stage task built the shards in the cache before launching the ranks
        corpus = open_corpus(
            spec.data, spec.model.context, spec.seed, vocabulary, ws.cache_dir, progress=False, origin=origin
        )
        run = driver.run(spec, parent, hooks=hooks, checkpoints=job.checkpoints(storage), corpus=corpus)
        run = _gathered(run, spec)
        if rank == 0:  # the registrable directory, written once, where the task registers it
            save_outputs(job_dir, write_version(Path(job.output), run, vocabulary, spec, corpus))
    except Exception as e:
        traceback.print_exc()
        known = isinstance(e, (driver.StageFailed, CheckpointError))  # their messages are one line and name the stage
        reason = str(e) if known else f"{where}rank {rank}: {type(e).__name__}: {e}"
        (job_dir / f"error-{rank}.txt").write_text(reason.split("\n")[0])
        if isinstance(e, UserError):  # the task raises it as one: not retried (flows/staged.py retryable)
            (job_dir / f"user-error-{rank}").touch()
        return 1
    return 0


if __name__ == "__main__":
    end_rank(main(Path(sys.argv[1])))  # leaves the group; no interpreter teardown (models/train/parallel.py says why)
