"""``staged``: the command line.

    staged run CONFIG [--workdir DIR] [--set dotted.key=value ...]
    staged bench --preset quick --out FILE.json [--workdir DIR]   (options: bench/main.py)

User mistakes (a missing file, an unknown key, a wrong type, an impossible growth) end with a
one-line message and exit code 2 before anything is trained or registered; a failed run exits 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from tasks.config import ConfigError, PipelineConfig, load_config


def _fail(message: str, code: int = 2) -> None:
    print(f"staged: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _check_inputs(config: PipelineConfig, workdir: Path) -> None:
    """Checks that need the file system; the config tree validated everything else."""
    from models.data import ByteCorpus

    try:
        ByteCorpus(config.data, config.model.context, config.seed)
    except (OSError, ValueError) as e:
        _fail(str(e))
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        _fail(f"workdir {str(workdir)!r} is not writable: {e.strerror}")


def _embedded_defaults(workdir: Path) -> None:
    """With no Prefect server configured, keep the ephemeral server's database in the workdir."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # avoids a 'database is locked' heartbeat
    if "PREFECT_API_URL" not in os.environ:
        db = workdir.resolve() / "prefect.db"
        os.environ.setdefault("PREFECT_SERVER_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{db}")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # mlflow probes for git; none is needed


def _print_summary(results, png: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from tasks.report import COLUMNS, summary_rows

    table = Table(title=f"{results[0].ref.name}: staged training")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for row in summary_rows(results):
        table.add_row(*(str(row[c]) for c in COLUMNS))
    console = Console()
    console.print(table)
    console.print(f"loss curve: {png}")


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as e:
        _fail(str(e))
    workdir = Path(args.workdir)
    _check_inputs(config, workdir)
    _embedded_defaults(workdir)
    logging.getLogger("alembic").setLevel(logging.WARNING)

    from flows.staged import staged_training

    state = staged_training(config, str(workdir), return_state=True)
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        _fail(f"run {state.name.lower()}: {error}", code=1)
    results = state.result()
    _print_summary(results, workdir / f"{config.registry.model_name}-loss.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="staged", description="Staged (progressive) training with Prefect and MLflow.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train every stage of a pipeline config, registering each in MLflow")
    run.add_argument("config", help="pipeline YAML, e.g. configs/demo.yaml")
    run.add_argument("--workdir", default=".staged", help="where the embedded MLflow/Prefect stores and plots go (default: %(default)s)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set stages.1.steps=0 (repeatable)")  # fmt: skip
    run.set_defaults(func=cmd_run)
    bench = sub.add_parser("bench", help="staged vs scratch benchmark: time/FLOPs to target, efficiency, report")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the benchmark's module is imported only when it is asked for
        from bench.main import add_arguments, cmd_bench

        add_arguments(bench)
        bench.set_defaults(func=cmd_bench)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
