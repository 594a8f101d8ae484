"""``staged generate|eval|models list``: use what was trained, straight from the MLflow registry.

    staged generate MODEL_URI --prompt TEXT [--max-bytes N] [--temperature T] [--top-k K] [--seed S]
    staged eval MODEL_URI [--config YAML]
    staged models list NAME

MODEL_URI is models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS. The store is the
one ``staged run`` used: MLFLOW_TRACKING_URI when set, else the embedded store in --workdir.
These commands need no Prefect server. Bad URIs and missing models, versions or aliases end with
one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

_WORKDIR_HELP = "workdir of the embedded store, when MLFLOW_TRACKING_URI is not set (default: %(default)s)"


def _fail(message: str) -> None:
    print(f"staged: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _guard(func):
    """Run a command, turning a UseError into the one-line exit-2 message."""

    def run(args: argparse.Namespace) -> int:
        from tasks.lookup import UseError

        try:
            return func(args)
        except UseError as e:
            _fail(str(e))
        return 2

    return run


@_guard
def cmd_generate(args: argparse.Namespace) -> int:
    from models.sample import decode, generate
    from tasks.lookup import load_model, open_store, resolve

    store = open_store(args.workdir)
    model = load_model(store, resolve(store, args.model_uri))
    out = generate(
        model, args.prompt.encode(), args.max_bytes, temperature=args.temperature, top_k=args.top_k, seed=args.seed
    )
    print(args.prompt + decode(out))
    return 0


@_guard
def cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from models.data import DataConfig
    from tasks.config import ConfigError, PipelineConfig, load_config
    from tasks.gate import measure
    from tasks.lookup import load_model, open_store, resolve

    config = PipelineConfig()  # the default gate settings unless --config gives others
    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as e:
            _fail(str(e))
    store = open_store(args.workdir)
    mv = resolve(store, args.model_uri)
    tag = mv.tags.get("data_config")
    data = config.data if args.config or not tag else DataConfig.model_validate_json(tag)
    try:
        figures = measure(load_model(store, mv), data, config.gate, config.seed)
    except (OSError, ValueError) as e:
        _fail(str(e))
    table = Table(title=f"{mv.name} version {mv.version}: held-out validation set")
    for column in ("val loss (nats/byte)", "bits/byte", "bytes"):
        table.add_column(column, justify="right")
    table.add_row(f"{figures.val_loss:.4f}", f"{figures.bpb:.4f}", str(figures.tokens))
    console = Console()
    console.print(table)
    console.print(f"sample: {figures.sample!r}", markup=False, highlight=False)
    return 0


@_guard
def cmd_models_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from tasks.lookup import open_store, versions

    found, aliases = versions(open_store(args.workdir), args.name)
    table = Table(title=f"{args.name}: registered versions")
    for column in ("version", "stage", "layers", "parent", "val loss", "gate", "aliases"):
        table.add_column(column, justify="right")
    for v in found:
        t = v.tags
        table.add_row(
            str(v.version),
            t.get("stage", ""),
            t.get("n_layers", ""),
            t.get("parent_version", ""),
            t.get("val_loss", ""),
            t.get("gate_decision", ""),
            ", ".join(aliases.get(str(v.version), [])),
        )
    Console().print(table)
    return 0


def print_gate(workdir, model_name: str, version: str) -> None:
    """After ``staged run``: the gate's decision on the last version, refusals included."""
    from tasks.registry import Store

    tags = Store.resolve(workdir).client().get_model_version(model_name, version).tags
    if decision := tags.get("gate_decision"):
        print(f"gate: version {version} {decision}: {tags.get('gate_reason', '')}")


def add_use_commands(sub: argparse._SubParsersAction) -> None:
    """Register generate, eval and models list on the ``staged`` parser."""
    uri_help = "models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS"
    gen = sub.add_parser("generate", help="sample text from a registered version")
    gen.add_argument("model_uri", help=uri_help)
    gen.add_argument("--prompt", default="\n", help="text to continue")
    gen.add_argument("--max-bytes", type=int, default=200, help="bytes to generate (default: %(default)s)")
    gen.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: %(default)s)")
    gen.add_argument("--top-k", type=int, default=40, help="sample from the k likeliest bytes (default: %(default)s)")
    gen.add_argument("--seed", type=int, default=0, help="same seed, same text (default: %(default)s)")
    gen.set_defaults(func=cmd_generate)

    ev = sub.add_parser("eval", help="a registered version's loss and bits per byte on the validation set")
    ev.add_argument("model_uri", help=uri_help)
    ev.add_argument("--config", help="pipeline YAML whose data and gate settings to use (default: the version's data)")
    ev.set_defaults(func=cmd_eval)

    models = sub.add_parser("models", help="registered models")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    ls = models_sub.add_parser("list", help="versions of a registered model with stage, layers, val loss and aliases")
    ls.add_argument("name", help="registered model name, e.g. staged-smoke")
    ls.set_defaults(func=cmd_models_list)
    for p in (gen, ev, ls):
        p.add_argument("--workdir", default=".staged", help=_WORKDIR_HELP)
