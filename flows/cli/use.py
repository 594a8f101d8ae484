"""``staged generate|eval|models list``: use what was trained, straight from the MLflow registry.

    staged generate MODEL_URI --prompt TEXT [--max-bytes N] [--temperature T] [--top-k K] [--seed S]
    staged eval MODEL_URI [--config YAML]  |  --tasks NAMES [--include DIR] [--limit N]   (flows/cli/downstream.py)
    staged serve MODEL_URI [--host 127.0.0.1] [--port 5001]   (mlflow models serve, of a verified copy)
    staged models list NAME

MODEL_URI is models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS. The store is the
one ``staged run`` used: MLFLOW_TRACKING_URI when set, else the embedded store in --workdir.
These commands need no Prefect server. Bad URIs and missing models, versions or aliases end with
one line on stderr and exit code 2, and so does a version whose files do not match its manifest: every
one of these commands loads only a downloaded directory that verified (tasks/store/manifest.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.cli.errors import fail

MAX_GENERATE_BYTES = 1 << 20  # a remote caller must not be able to ask for an endless generation
_WORKDIR_HELP = "workdir of the embedded store, when MLFLOW_TRACKING_URI is not set (default: %(default)s)"


def _guard(func):
    """Run a command, turning a UseError into the one-line exit-2 message."""

    def run(args: argparse.Namespace) -> int:
        from tasks.registry import UseError
        from tasks.store import IntegrityError

        try:
            return func(args)
        except (UseError, IntegrityError) as e:  # a bad URI, or a version whose files do not verify
            fail(str(e))
        return 2

    return run


@_guard
def cmd_generate(args: argparse.Namespace) -> int:
    from models.sample import complete
    from tasks.registry import load_version, open_registry, resolve, version_ref

    if not 0 <= args.max_bytes <= MAX_GENERATE_BYTES:
        fail(f"--max-bytes {args.max_bytes} is outside 0..{MAX_GENERATE_BYTES}")
    registry = open_registry(args.workdir)
    model, tokenizer = load_version(registry, version_ref(resolve(registry, args.model_uri)))
    kwargs = {"temperature": args.temperature, "top_k": args.top_k, "seed": args.seed}
    print(complete(model, tokenizer, args.prompt, args.max_bytes, **kwargs))
    return 0


@_guard
def cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from models.data.bytes import DataConfig
    from tasks.config import ConfigError, PipelineConfig, load_config
    from tasks.gate import measure
    from tasks.registry import load_version, open_registry, resolve, version_ref
    from tasks.registry.schema import CardTags
    from tasks.workspace import Workspace

    if args.tasks is not None:  # downstream tasks (lm-evaluation-harness) instead of the validation loss
        from flows.cli.downstream import eval_tasks

        return eval_tasks(args)
    config = PipelineConfig()  # the default gate settings unless --config gives others
    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as e:
            fail(str(e))
    registry = open_registry(args.workdir)
    mv = resolve(registry, args.model_uri)
    card = CardTags.from_tags(mv.tags)
    data = config.data if args.config or not card else DataConfig.model_validate_json(card.data_config)
    try:
        cache = Path(Workspace.resolve(args.workdir).cache_dir)  # the token shards `staged run` built (or builds now)
        figures = measure(*load_version(registry, version_ref(mv)), data, config.gate, config.seed, cache)
    except (OSError, ValueError) as e:
        fail(str(e))
    table = Table(title=f"{mv.name} version {mv.version}: held-out validation set")
    for column in ("val loss (nats/token)", "bits/byte", "bits/token", "tokens", "bytes"):
        table.add_column(column, justify="right")
    cells = (f"{figures.val_loss:.4f}", f"{figures.bpb:.4f}", f"{figures.bpt:.4f}", figures.tokens, figures.bytes)
    table.add_row(*(str(c) for c in cells))
    console = Console()
    console.print(table)
    console.print(f"sample: {figures.sample!r}", markup=False, highlight=False)
    return 0


@_guard
def cmd_serve(args: argparse.Namespace) -> int:
    """``mlflow models serve`` on a verified local copy of the version: its code runs only once it matches."""
    import signal
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from tasks.registry import open_registry, verified_copy

    registry = open_registry(args.workdir)
    with tempfile.TemporaryDirectory(prefix="staged-serve-") as tmp:
        local = verified_copy(registry, args.model_uri, Path(tmp))
        print(f"serving {args.model_uri} (verified) on http://{args.host}:{args.port}/invocations", file=sys.stderr)
        mlflow = Path(sys.executable).with_name("mlflow")
        argv = [str(mlflow) if mlflow.exists() else "mlflow", "models", "serve", "-m", str(local)]
        argv += ["--env-manager", "local", "--host", args.host, "--port", str(args.port), "--workers", "1"]
        proc = subprocess.Popen(argv)
        for sig in (signal.SIGTERM, signal.SIGINT):  # stopping us stops the server, then the copy is removed
            signal.signal(sig, lambda *_: proc.terminate())
        return proc.wait()


@_guard
def cmd_models_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from tasks.registry import open_registry, versions
    from tasks.registry.schema import GateTags, VersionTags

    found, aliases = versions(open_registry(args.workdir), args.name)
    table = Table(title=f"{args.name}: registered versions")
    for column in ("version", "stage", "layers", "parent", "val loss", "gate", "aliases"):
        table.add_column(column, justify="right")
    for v in found:
        t, gate = VersionTags.from_tags(v.tags), GateTags.from_tags(v.tags)
        cells = [str(t.stage), str(t.n_layers), t.parent_version or "", f"{t.val_loss:.6f}"] if t else [""] * 4
        table.add_row(str(v.version), *cells, gate.decision if gate else "", ", ".join(aliases.get(str(v.version), [])))
    Console().print(table)
    return 0


def print_gate(workdir, model_name: str, version: str) -> None:
    """After ``staged run``: the gate's decision on the last version, refusals included."""
    from tasks.registry import Registry
    from tasks.registry.schema import GateTags

    gate = GateTags.from_tags(Registry.resolve(workdir).client().get_model_version(model_name, version).tags)
    if gate is not None:
        print(f"gate: version {version} {gate.decision}: {gate.reason}")


def add_use_commands(sub: argparse._SubParsersAction) -> None:
    """Register generate, eval and models list on the ``staged`` parser."""
    uri_help = "models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS"
    gen = sub.add_parser("generate", help="sample text from a registered version")
    gen.add_argument("model_uri", help=uri_help)
    gen.add_argument("--prompt", default="\n", help="text to continue")
    gen.add_argument(
        "--max-bytes",
        type=int,
        default=200,
        help="tokens to generate: bytes for the byte vocabulary (default: %(default)s)",
    )
    gen.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: %(default)s)")
    gen.add_argument("--top-k", type=int, default=40, help="sample from the k likeliest bytes (default: %(default)s)")
    gen.add_argument("--seed", type=int, default=0, help="same seed, same text (default: %(default)s)")
    gen.set_defaults(func=cmd_generate)

    ev = sub.add_parser("eval", help="a registered version's loss, bits per byte and per token on the validation set")
    ev.add_argument("model_uri", help=uri_help)
    ev.add_argument("--config", help="pipeline YAML whose data and gate settings to use (default: the version's data)")
    ev.add_argument("--tasks", help="lm-evaluation-harness tasks, comma-separated; `default`: the shipped ones")
    ev.add_argument("--include", help="with --tasks: a directory of lm_eval task YAML files to add")
    ev.add_argument("--limit", type=int, help="with --tasks: at most this many documents per task")
    ev.set_defaults(func=cmd_eval)

    serve = sub.add_parser("serve", help="serve a registered version (mlflow models serve) after verifying its files")
    serve.add_argument("model_uri", help=uri_help)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=5001, help="(default: %(default)s)")
    serve.set_defaults(func=cmd_serve)

    models = sub.add_parser("models", help="registered models")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    ls = models_sub.add_parser("list", help="versions of a registered model with stage, layers, val loss and aliases")
    ls.add_argument("name", help="registered model name, e.g. staged-smoke")
    ls.set_defaults(func=cmd_models_list)
    for p in (gen, ev, serve, ls):
        p.add_argument("--workdir", default=".staged", help=_WORKDIR_HELP)
