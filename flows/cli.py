"""``staged``: the command line.

    staged run CONFIG [--workdir DIR] [--set dotted.key=value ...] [--from-version N]
    staged resume CONFIG [--workdir DIR] ...   (run, but only where an earlier run left a registry)
    staged generate|eval MODEL_URI ...,  staged models list NAME   (flows/use_cli.py)
    staged servers up|down|status|env [--dir DIR]   (flows/servers_cli.py: local Postgres/S3/Prefect/MLflow)
    staged bench --preset quick --out FILE.json [--workdir DIR]   (options: bench/main.py)

Rerunning the same command resumes: registered stages are skipped, an interrupted one continues
from its newest checkpoint. User mistakes (a missing file, an unknown key, a wrong type, an
impossible growth, a missing or tampered parent version) end with a one-line message and exit
code 2 before anything is trained or registered; an unreachable MLflow or S3 endpoint, and a
failed run, exit 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from flows.servers_cli import add_server_commands
from flows.use_cli import add_use_commands, print_gate
from tasks.config import ConfigError, PipelineConfig, load_config

# MLflow's own HTTP retries (urllib3 backoff); its defaults wait minutes before giving up
MLFLOW_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


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


def _endpoint(uri: str) -> str:
    """A URI as safe to print: no user or password."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    return (
        parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()
        if parts.hostname
        else uri
    )


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def _check_endpoints(config: PipelineConfig, workdir: Path, from_version: str | None):
    """Reach the storage and the registry before anything runs; verify a --from-version parent."""
    from tasks.registry import Store
    from tasks.storage import S3Storage, StorageError, open_storage

    store = Store.resolve(workdir, config.storage)
    try:
        storage = open_storage(store.checkpoints, store.max_attempts)
        if isinstance(storage, S3Storage):
            storage.check()
    except StorageError as e:
        _fail(str(e), code=2 if "does not exist" in str(e) else 1)
    except Exception as e:  # botocore configuration errors (bad profile, region): still one line
        _fail(f"storage {config.storage.uri}: {_one_line(e)}")
    embedded = store.artifact_location is not None
    if not embedded:
        try:
            store.client().search_experiments(max_results=1)
        except Exception as e:
            _fail(f"MLflow tracking URI {_endpoint(store.tracking_uri)} unreachable: {_one_line(e)}", code=1)
    if from_version is not None:
        _check_parent(config, store, workdir, from_version, embedded)


def _check_parent(config: PipelineConfig, store, workdir: Path, version: str, embedded: bool) -> None:
    import tempfile

    from tasks.registry import download, get_version

    name = config.registry.model_name
    if embedded and not (workdir / "mlflow.db").is_file():
        _fail(f"--from-version {version}: no registry in workdir {str(workdir)!r}")
    if not version.isdigit():
        _fail(f"--from-version {version!r} is not a version number")
    try:
        ref = get_version(store.client(), name, version)
    except Exception:
        _fail(f"--from-version {version}: model {name!r} has no version {version}")
    if ref.stage >= len(config.stages):
        _fail(f"--from-version {version} is stage {ref.stage}; the config has no later stage to run")
    try:
        with tempfile.TemporaryDirectory(prefix="staged-check-") as tmp:
            cfg, _ = download(store, ref, Path(tmp))
    except Exception as e:
        _fail(f"--from-version {version}: refusing a parent whose weights do not verify: {_one_line(e)}")
    want = config.stage_specs()[ref.stage - 1].model
    if cfg != want:
        _fail(
            f"--from-version {version}: its model ({cfg.n_layers} layers, d_model {cfg.d_model}) is not "
            f"stage {ref.stage} of this config ({want.n_layers} layers, d_model {want.d_model})"
        )


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
    if args.command == "resume" and not (workdir / "mlflow.db").is_file() and "MLFLOW_TRACKING_URI" not in os.environ:
        _fail(f"nothing to resume: workdir {str(workdir)!r} holds no earlier run")
    _check_inputs(config, workdir)
    for key, value in MLFLOW_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    _check_endpoints(config, workdir, args.from_version)
    _embedded_defaults(workdir)

    from flows.staged import staged_training

    state = staged_training(config, str(workdir), args.from_version, return_state=True)
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        _fail(f"run {state.name.lower()}: {error}", code=1)
    results = state.result()
    _print_summary(results, workdir / f"{config.registry.model_name}-loss.png")
    print_gate(workdir, config.registry.model_name, results[-1].ref.version)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="staged", description="Staged (progressive) training with Prefect and MLflow."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train every stage of a pipeline config, registering each in MLflow")
    resume = sub.add_parser(
        "resume", help="rerun an interrupted `run` (same config and workdir): skip done stages, resume the rest"
    )
    for p in (run, resume):
        p.add_argument("config", help="pipeline YAML, e.g. configs/demo.yaml")
        p.add_argument(
            "--workdir",
            default=".staged",
            help="where the embedded MLflow/Prefect stores and plots go (default: %(default)s)",
        )
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value, e.g. --set stages.1.steps=0 (repeatable)",
        )
        p.add_argument(
            "--from-version",
            default=None,
            metavar="N",
            help="start from registered version N: run the config's stages after N's stage, growing from it",
        )
        p.set_defaults(func=cmd_run)
    add_use_commands(sub)
    add_server_commands(sub)
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
