"""Another node of multi-node stages: it has no job of its own and joins the stage task's torchrun.

    python -m tasks.parallel.follow --nnodes N --nproc-per-node M --rdzv-endpoint HOST:PORT [--once]

Runs this node's torchrun (tasks/parallel/rendezvous.py) against the endpoint the stage task's node
hosts (``stages.<i>.parallel.rdzv_endpoint``); its ranks start with an empty job directory and get the
job from rank 0 (tasks/parallel/worker.py). When a stage ends it joins the next one, until it is
stopped: on Kubernetes the Job ends these pods when pod 0's flow run ends (successPolicy on index 0,
deploy/work-pools/kubernetes-multinode.json). ``--once``: one stage, then exit with torchrun's code.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

from pydantic import ValidationError

from tasks.config import ParallelConfig, format_validation_error
from tasks.parallel.launch import ranks_env, torchrun_command


def follow(parallel: ParallelConfig, once: bool) -> int:
    while True:
        with tempfile.TemporaryDirectory(prefix="staged-follow-") as job_dir:
            code = subprocess.run(torchrun_command(parallel, job_dir), env=ranks_env()).returncode
        if once:
            return code
        time.sleep(1 if code == 0 else 5)  # a failed round (no stage hosted yet): wait, then join the next


def parse(argv: list[str] | None = None) -> tuple[ParallelConfig, bool]:
    """(this node's ParallelConfig, --once); ValueError (one line) for a bad endpoint or count."""
    parser = argparse.ArgumentParser(prog="python -m tasks.parallel.follow", description=__doc__.splitlines()[0])
    parser.add_argument("--nnodes", type=int, required=True)
    parser.add_argument("--nproc-per-node", type=int, required=True)
    parser.add_argument("--rdzv-endpoint", required=True, help="host:port of the stage task's node")
    parser.add_argument("--once", action="store_true", help="join one stage, then exit")
    args = parser.parse_args(argv)
    try:
        parallel = ParallelConfig(nproc=args.nproc_per_node, nnodes=args.nnodes, rdzv_endpoint=args.rdzv_endpoint)
    except ValidationError as e:
        raise ValueError(format_validation_error(e)) from None
    return parallel, args.once


def main(argv: list[str] | None = None) -> int:
    try:
        parallel, once = parse(argv)
    except ValueError as e:
        print(f"follow: error: {e}", file=sys.stderr)
        return 2
    return follow(parallel, once)


if __name__ == "__main__":
    sys.exit(main())
