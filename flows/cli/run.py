"""``staged run|resume CONFIG``: check everything a user can get wrong, then run the flow.

    staged run CONFIG [--workdir DIR] [--set dotted.key=value ...] [--from-version N]
    staged resume CONFIG [--workdir DIR] ...   (run, but only where an earlier run left a registry)

User mistakes (a missing file, an unknown key, a wrong type, an impossible growth, a missing or
tampered parent version) end with a one-line message and exit code 2 before anything is trained or
registered; an unreachable MLflow or S3 endpoint, and a failed run, exit 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

from flows.cli.errors import fail, one_line
from flows.cli.use import print_gate
from tasks.config import ConfigError, PipelineConfig, load_config

# MLflow's own HTTP retries (urllib3 backoff); its defaults wait minutes before giving up
MLFLOW_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def _check_inputs(config: PipelineConfig, workdir: Path) -> None:
    """Checks that need the file system; the config tree validated everything else. A document corpus is read
    once, whole (every file parses, both splits have documents); it is tokenized later, by the flow."""
    from flows.approve import NotApproved, check_approvals
    from models.data.bytes import ByteCorpus
    from models.data.corpus import check_documents
    from tasks.workspace import Workspace

    try:  # before the embedded Prefect API starts: the flow checks it again, wherever it runs from
        check_approvals(config, os.environ.get("PREFECT_API_URL", ""))
    except NotApproved as e:
        fail(str(e))
    if config.gate.enabled and config.gate.metric.startswith("task:"):  # before anything trains
        from tasks.downstream import TaskError, check

        try:
            check(config.gate.metric.removeprefix("task:").partition("/")[0])
        except TaskError as e:
            fail(f"gate.metric {config.gate.metric}: {e}")
    named = [(f"data source {s.name!r}: ", s.corpus()) for s in config.data.sources or ()] or [("", config.data)]
    for where, data in named:  # each source of a mixture, named in the message
        try:
            if data.format == "bytes":
                ByteCorpus(data, config.model.context, config.seed)
            else:
                check_documents(data, Path(Workspace.resolve(workdir).cache_dir))
        except (OSError, ValueError) as e:
            fail(where + str(e))
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        fail(f"workdir {str(workdir)!r} is not writable: {e.strerror}")


def _check_endpoints(config: PipelineConfig, workdir: Path, from_version: str | None) -> None:
    """Reach the storage and the registry before anything runs; verify a --from-version parent."""
    from botocore.exceptions import BotoCoreError
    from mlflow.exceptions import MlflowException

    from models.errors import UserError
    from tasks.store import StorageError
    from tasks.workspace import Workspace

    ws = Workspace.resolve(workdir, config.storage)
    try:
        ws.storage().check()
    except StorageError as e:
        fail(str(e), code=2 if isinstance(e, UserError) else 1)
    except (BotoCoreError, ValueError, OSError) as e:  # a bad profile or region, an endpoint URL that does not parse
        fail(f"storage {config.storage.uri}: {one_line(e)}")
    if not ws.registry.embedded:
        try:
            ws.registry.client().search_experiments(max_results=1)
        except ValueError as e:  # an MLFLOW_* setting that does not parse (MLflow reads them per request)
            fail(f"MLflow settings: {one_line(e)}")
        except MlflowException as e:  # MLflow wraps connection errors (after its retries) and HTTP errors alike
            fail(f"MLflow tracking URI {ws.registry.tracking_uri} unreachable: {one_line(e)}", code=1)
    _check_pools(config, ws)
    if from_version is not None:
        _check_parent(config, ws.registry, workdir, from_version)


def _check_pools(config: PipelineConfig, ws) -> None:
    """Stages sent to work pools: what a worker elsewhere needs, and the pools themselves (flows/pools.py)."""
    if not any(config.placements()):
        return
    from flows.pools import PoolRefused, check_pools

    try:
        check_pools(config, ws)
    except PoolRefused as e:
        fail(str(e))
    except Exception as e:  # the Prefect API unreachable, or refusing our credentials
        fail(f"Prefect API: {one_line(e)}", code=1)


def _check_parent(config: PipelineConfig, registry, workdir: Path, version: str) -> None:
    from mlflow.exceptions import MlflowException

    from models.errors import UserError
    from models.families.lookup import read_config
    from tasks.registry import fetch, get_version
    from tasks.store import IntegrityError

    name = config.registry.model_name
    if registry.embedded and not (workdir / "mlflow.db").is_file():
        fail(f"--from-version {version}: no registry in workdir {str(workdir)!r}")
    if not version.isdigit():
        fail(f"--from-version {version!r} is not a version number")
    try:
        ref = get_version(registry.client(), name, version)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            fail(f"--from-version {version}: model {name!r} has no version {version}")
        fail(f"--from-version {version}: the registry refused it: {one_line(e)}", code=1)
    except ValueError as e:  # a version without the stage tags a parent needs
        fail(f"--from-version {version}: not a stage version: {one_line(e)}")
    if ref.stage >= len(config.stages):
        fail(f"--from-version {version} is stage {ref.stage}; the config has no later stage to run")
    try:
        with tempfile.TemporaryDirectory(prefix="staged-check-") as tmp:
            cfg = read_config(fetch(registry, ref, Path(tmp)).path)  # verified; its weights are read by the stage
    except IntegrityError as e:
        fail(f"--from-version {version}: refusing a parent whose files do not verify: {one_line(e)}")
    except UserError as e:  # verified, but not a model this code reads (a family it does not know, say)
        fail(f"--from-version {version}: cannot use it: {one_line(e)}")
    except (MlflowException, OSError) as e:  # the files could not be read: nothing is known about them yet
        fail(f"--from-version {version}: cannot download it: {one_line(e)}", code=1)
    spec = config.stage_specs()[ref.stage - 1]
    _check_parent_tokenizer(spec, ref, version, workdir)
    want = spec.model
    if cfg != want:
        fail(
            f"--from-version {version}: its model ({cfg.n_layers} layers, d_model {cfg.d_model}) is not "
            f"stage {ref.stage} of this config ({want.n_layers} layers, d_model {want.d_model})"
        )


def _check_parent_tokenizer(spec, ref, version: str, workdir: Path) -> None:
    """Growth keeps token ids: the config's tokenizer (trained here if it must be) must be the parent's."""
    from tasks.driver import resolve_tokenizer
    from tasks.workspace import Workspace

    try:
        cache = Path(Workspace.resolve(workdir).cache_dir)
        ours = None if spec.tokenizer.kind == "bytes" else resolve_tokenizer(spec, cache).identity
    except (OSError, ValueError) as e:
        fail(str(e))
    if ours != ref.tokenizer_sha256:
        theirs, ours = (f"{s[:12]}…" if s else "the byte vocabulary" for s in (ref.tokenizer_sha256, ours))
        fail(
            f"--from-version {version}: its tokenizer ({theirs}) differs from this config's ({ours}): "
            "growth keeps the vocabulary, so the tokenizers must be the same"
        )


def _embedded_defaults(workdir: Path) -> None:
    """With no Prefect server configured, keep the ephemeral server's database in the workdir."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # avoids a 'database is locked' heartbeat
    if "PREFECT_API_URL" not in os.environ:
        db = workdir.resolve() / "prefect.db"
        os.environ.setdefault("PREFECT_SERVER_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{db}")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # mlflow probes for git; none is needed
    # a fresh database migrates for ~20 s on 2 busy cores: Prefect's default 20 s start-up timeout is too tight
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _print_summary(results, png: Path) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from tasks.publish import COLUMNS, allocation_line, summary_rows

    # no vertical rules: nine columns fit 80 characters (a pipe, a log, a narrow terminal) without wrapping a header
    table = Table(
        title=f"{results[0].ref.name}: staged training", box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True
    )
    for column in COLUMNS:
        table.add_column(column, justify="right", no_wrap=True)
    for row in summary_rows(results):
        table.add_row(*(str(row[c]) for c in COLUMNS))
    console = Console()
    console.print(table)
    print(allocation_line(results))  # one line, never wrapped
    console.print(f"loss curve: {png}")


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as e:
        fail(str(e))
    workdir = Path(args.workdir)
    if args.command == "resume" and not (workdir / "mlflow.db").is_file() and "MLFLOW_TRACKING_URI" not in os.environ:
        fail(f"nothing to resume: workdir {str(workdir)!r} holds no earlier run")
    # first, before any check imports Prefect: its settings (the embedded database, the start-up timeout) are
    # read from the environment once, when it is imported
    _embedded_defaults(workdir)
    _check_inputs(config, workdir)
    for key, value in MLFLOW_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    _check_endpoints(config, workdir, args.from_version)

    from flows.staged import staged_training

    state = staged_training(config, str(workdir), args.from_version, return_state=True)
    if not state.is_completed():
        from models.errors import UserError

        error = state.result(raise_on_failure=False)  # a user's mistake (a tampered version's files too): exit 2
        fail(f"run {state.name.lower()}: {error}", code=2 if isinstance(error, UserError) else 1)
    results = state.result()
    _print_summary(results, workdir / f"{config.registry.model_name}-loss.png")
    print_gate(workdir, config.registry.model_name, results[-1].ref.version)
    return 0


def add_run_commands(sub: argparse._SubParsersAction) -> None:
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
