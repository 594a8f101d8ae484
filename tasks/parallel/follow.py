"""Another node of a multi-node stage: it has no job of its own and joins the stage task's torchrun, once.

    python -m tasks.parallel.follow --nnodes N --nproc-per-node M --rdzv-endpoint HOST:PORT

Runs this node's torchrun (tasks/parallel/rendezvous.py) against the endpoint the stage task's node
hosts (``stages.<i>.parallel.rdzv_endpoint``); its ranks start with an empty job directory and get the
job from rank 0 (tasks/parallel/worker.py). It exits with torchrun's code when the stage ends: each stage
is its own flow run (flows/pools.py) and, on Kubernetes, its own indexed Job whose pods all end with it
(deploy/work-pools/kubernetes-multinode.json; the Job's successPolicy on index 0 ends it with pod 0).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile

from pydantic import ValidationError

from tasks.config import ParallelConfig, format_validation_error
from tasks.parallel.launch import ranks_env, torchrun_command


def follow(parallel: ParallelConfig) -> int:
    """torchrun's c10d rendezvous waits (its join timeout) for pod 0 to host the stage."""
    with tempfile.TemporaryDirectory(prefix="staged-follow-") as job_dir:
        return subprocess.run(torchrun_command(parallel, job_dir), env=ranks_env()).returncode


def parse(argv: list[str] | None = None) -> ParallelConfig:
    """This node's ParallelConfig; ValueError (one line) for a bad endpoint or count."""
    parser = argparse.ArgumentParser(prog="python -m tasks.parallel.follow", description=__doc__.splitlines()[0])
    parser.add_argument("--nnodes", type=int, required=True)
    parser.add_argument("--nproc-per-node", type=int, required=True)
    parser.add_argument("--rdzv-endpoint", required=True, help="host:port of the stage task's node")
    args = parser.parse_args(argv)
    try:
        parallel = ParallelConfig(nproc=args.nproc_per_node, nnodes=args.nnodes, rdzv_endpoint=args.rdzv_endpoint)
    except ValidationError as e:
        raise ValueError(format_validation_error(e)) from None
    return parallel


def main(argv: list[str] | None = None) -> int:
    try:
        parallel = parse(argv)
    except ValueError as e:
        print(f"follow: error: {e}", file=sys.stderr)
        return 2
    return follow(parallel)


if __name__ == "__main__":
    sys.exit(main())
