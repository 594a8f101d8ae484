"""``staged``: the command line, one module per command group.

    staged run|resume CONFIG ...                        flows/cli/run.py
    staged generate|eval|serve MODEL_URI ..., models list   flows/cli/use.py
    staged servers up|down|status|env [--dir DIR]       flows/cli/servers.py (local Postgres/S3/Prefect/MLflow)
    staged bench --preset quick --out FILE.json ...     flows/cli/bench.py

Rerunning the same ``staged run`` resumes: registered stages are skipped, an interrupted one continues
from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys

from flows.cli.bench import add_bench_command
from flows.cli.plan import add_plan_command
from flows.cli.run import add_run_commands
from flows.cli.servers import add_server_commands
from flows.cli.use import add_use_commands


def main(argv: list[str] | None = None) -> int:
    # MLflow draws a download bar on stderr whenever tqdm is installed (it comes with `datasets`), per file
    # of a version directory: a command's stderr is its messages, one line for a mistake
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = argparse.ArgumentParser(
        prog="staged", description="Staged (progressive) training with Prefect and MLflow."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_commands(sub)
    add_use_commands(sub)
    add_server_commands(sub)
    add_bench_command(sub, sys.argv[1:] if argv is None else argv)
    add_plan_command(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
