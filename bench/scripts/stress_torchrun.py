"""Run one two-rank stage under torchrun many times in a row and count the runs that fail.

    python -m bench.scripts.stress_torchrun --runs 30                          # the stage: alternating ddp / fsdp
    python -m bench.scripts.stress_torchrun --bare --teardown interpreter      # the abort, reproduced in plain torch
    python -m bench.scripts.stress_torchrun --bare --teardown end_rank         # the same ranks, ended by end_rank

Each run is the real launch path of a stage (tasks/parallel/launch.py: torchrun, rendezvous, the
process group, training, rank 0 saving, teardown), on a fresh workdir. A run that fails prints its
one-line reason; with ``PYTHONFAULTHANDLER=1`` (set here) a rank killed by SIGABRT also leaves every
thread's Python stack in the torchrun log, printed after the reason. Exit status: the number of
failed runs (0 when every run passed). Kept out of the test suite: 30 runs take ~4 minutes on 2 cores.

``--bare``: each run is two ranks of this file with nothing of ours but the ending: a 4-layer
``fully_shard`` model, three AdamW steps, ``destroy_process_group``, then either a normal return
(``interpreter``: the group is torn down at interpreter finalization) or ``models.train.parallel.end_rank``.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tasks.config import load_config, stage_key
from tasks.parallel import TorchrunFailed, launch
from tasks.parallel.launch import ranks_env
from tasks.workspace import StageJob, Workspace

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


def one_run(strategy: str, steps: int, workdir: Path, log: logging.Logger) -> float:
    """One stage-1 training of the smoke model by two gloo ranks: its wall seconds (raises TorchrunFailed)."""
    sets = [f"stages.0.steps={steps}", "stages.0.parallel.nproc=2", f"stages.0.parallel.strategy={strategy}"]
    spec = load_config(SMOKE, sets).stage_specs()[0]
    workspace = Workspace.resolve(workdir)
    job = StageJob(spec=spec, parent=None, workspace=workspace, key=stage_key(spec, None), output=str(workdir / "v"))
    start = time.perf_counter()
    launch(job, lambda info: None, log)
    return time.perf_counter() - start


def bare_rank(teardown: str) -> None:
    """One rank of ``--bare``: FSDP2 on gloo, a few steps, then the chosen ending."""
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from models.train.parallel import end_rank

    dist.init_process_group("gloo")
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(4)])
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters())
    for _ in range(3):
        model(torch.randn(4, 64)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    if teardown == "end_rank":
        end_rank(0)
    dist.destroy_process_group()


def bare_run(teardown: str) -> float:
    """Two ranks of :func:`bare_rank` under our torchrun; raises TorchrunFailed with torchrun's last lines."""
    cmd = [sys.executable, "-m", "tasks.parallel.rendezvous", "--nnodes=1", "--nproc-per-node=2"]
    cmd += ["--rdzv-backend=staged-c10d", "--rdzv-endpoint=127.0.0.1:0", "--local-addr=127.0.0.1"]
    cmd += ["-m", "bench.scripts.stress_torchrun", "--rank", teardown]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=ranks_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if "terminate" in line or "exitcode" in line]
        raise TorchrunFailed("; ".join(lines[:3]) or f"torchrun exited with code {proc.returncode}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=4, help="training steps per run (default 4)")
    parser.add_argument("--strategy", choices=["ddp", "fsdp", "both"], default="both")
    parser.add_argument("--bare", action="store_true", help="plain-torch FSDP2 ranks instead of the stage")
    parser.add_argument("--teardown", choices=["end_rank", "interpreter"], default="end_rank", help="with --bare")
    parser.add_argument("--rank", help=argparse.SUPPRESS)  # set when torchrun starts this file as a --bare rank
    args = parser.parse_args(argv)
    if args.rank:
        bare_rank(args.rank)
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["PYTHONFAULTHANDLER"] = "1"  # a rank killed by a signal dumps every thread's stack
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log = logging.getLogger("stress")
    strategies = ["ddp", "fsdp"] if args.strategy == "both" else [args.strategy]
    if args.bare:
        strategies = [f"bare fsdp, {args.teardown}"]
    failed = 0
    for i in range(args.runs):
        strategy = strategies[i % len(strategies)]
        with tempfile.TemporaryDirectory(prefix="staged-stress-") as tmp:
            try:
                seconds = bare_run(args.teardown) if args.bare else one_run(strategy, args.steps, Path(tmp), log)
                print(f"run {i + 1}/{args.runs} {strategy}: ok in {seconds:.1f} s", flush=True)
            except TorchrunFailed as e:
                failed += 1
                print(f"run {i + 1}/{args.runs} {strategy}: FAILED: {e}", flush=True)
    print(f"{args.runs - failed}/{args.runs} runs passed, {failed} failed")
    return failed


if __name__ == "__main__":
    sys.exit(main())
