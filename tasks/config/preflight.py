"""Checks of a valid config against the machine it is about to run on (the tree itself is machine-free).

    check_parallel(config)   # ConfigError (one line) when a stage asks for more processes than this node has

A stage's ``parallel.nproc`` is per node: one process per GPU with NCCL, one per CPU core with gloo
(more gloo processes than cores only time-slice them, and a typo like ``nproc: 20`` would start 20
copies of the model). Called by ``staged run`` before anything starts, and by the stage task before
it launches torchrun (a flow started without the command line).
"""

from __future__ import annotations

import os

import torch

from tasks.config.load import ConfigError
from tasks.config.schema import PipelineConfig, StageSpec


def devices_here(device: str) -> tuple[int, str]:
    """(how many, what) a stage on ``train.device`` can put one process each on: GPUs or CPU cores."""
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.device_count(), "GPUs"
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, "CPU cores"


def check_stage(spec: StageSpec) -> None:
    nproc = spec.parallel.nproc
    if nproc == 1:
        return
    have, what = devices_here(spec.train.device)
    if nproc > have:
        raise ConfigError(
            f"stages.{spec.index - 1}.parallel.nproc {nproc} is more than the {have} {what} of this machine"
        )


def check_parallel(config: PipelineConfig) -> None:
    for spec in config.stage_specs():
        check_stage(spec)
