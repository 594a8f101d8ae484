"""``staged bench``: the staged-vs-scratch benchmark (bench/). Its modules load only when it is asked for."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from flows.cli.errors import fail


def add_bench_command(sub: argparse._SubParsersAction, argv: list[str]) -> None:
    bench = sub.add_parser(
        "bench", help="staged vs scratch, equally tuned, held-out seeds, several budgets: FLOPs/time to target"
    )
    if argv[:1] != ["bench"]:  # torch and the presets are imported only for `staged bench`
        return
    from bench.suite.presets import PRESETS
    from bench.suite.schedules import SCHEDULES

    bench.add_argument(
        "--preset",
        choices=sorted([*PRESETS, "cost"]),
        default="quick",
        help="cost: what a stage costs beside training, against writing its bytes once (bench/overhead/cost.py; "
        "--set sizes=s,m,l --set repeats=3)",
    )
    bench.add_argument("--out", required=True, help="JSON summary to write (and its plot beside it, as .png)")
    bench.add_argument(
        "--workdir", default=".staged", help="where plots, stores and artifacts go (default: %(default)s)"
    )
    bench.add_argument("--schedules", help=f"comma-separated, from: {', '.join(SCHEDULES)}")
    bench.add_argument("--seeds", help="comma-separated held-out seeds (never tuning seeds), e.g. 4,5,6")
    bench.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset field, e.g. --set budgets=[1,4] --set tuning.trials=8",
    )
    bench.add_argument("--no-flow", action="store_true", help="skip the Prefect-flow orchestration measurement")
    bench.add_argument("--no-publish", action="store_true", help="skip Prefect/MLflow artifacts")
    bench.add_argument(
        "--only",
        choices=["efficiency", "orchestration"],
        help="only that measurement (orchestration: the first schedule, untuned defaults, at the flow budget)",
    )
    bench.set_defaults(func=cmd_bench)


def _passive_openmp() -> None:
    """Re-exec once with OMP_WAIT_POLICY=PASSIVE unless set. On a shared 2-core machine, spinning
    OpenMP threads collapse when another process is busy (measured here: 12L d64 step 0.11 s idle,
    1-3 s under load with spinning, 0.28 s passive). It must be set before torch is loaded."""
    import torch

    if "OMP_WAIT_POLICY" not in os.environ and not torch.cuda.is_available():
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def cmd_cost(args: argparse.Namespace) -> int:
    from bench.overhead.cost import SIZES, run

    given = dict(o.partition("=")[::2] for o in args.overrides)
    if unknown := sorted(set(given) - {"sizes", "repeats"}):
        fail(f"preset cost: unknown key {unknown[0]!r} (sizes, repeats)")
    sizes = given.get("sizes", "s,m,l").split(",")
    if bad := [s for s in sizes if s not in SIZES]:
        fail(f"preset cost: unknown size {bad[0]!r} (choose from {', '.join(SIZES)})")
    if not given.get("repeats", "3").isdigit() or int(given.get("repeats", "3")) < 1:
        fail(f"preset cost: repeats {given['repeats']!r} is not a positive whole number")
    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        fail(f"--out {str(out)!r}: not a file in an existing directory")
    run(sizes, Path(args.workdir), out, int(given.get("repeats", "3")))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    _passive_openmp()
    if args.preset == "cost":
        return cmd_cost(args)
    from pydantic import ValidationError

    from bench.main import build_preset, run_bench
    from bench.suite.report import markdown, write_json
    from tasks.config import format_validation_error

    try:
        preset = build_preset(args.preset, args.schedules, args.seeds, args.overrides)
    except ValidationError as e:
        fail(f"preset {args.preset}: {format_validation_error(e)}")
    except ValueError as e:
        fail(str(e))
    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        fail(f"--out {str(out)!r}: not a file in an existing directory")
    flags = {"flow": not args.no_flow, "publish_artifacts": not args.no_publish and not args.only, "only": args.only}
    summary = run_bench(preset, Path(args.workdir), **flags)
    summary.pop("arms", None)
    write_json(summary, out)
    plots = [f for f in summary.get("files", []) if f.endswith(".png")]
    if plots:  # the plot beside the JSON: docs/bench-budgets.json comes with docs/bench-budgets.png
        shutil.copyfile(plots[0], out.with_suffix(".png"))
    print(markdown(summary) if not args.only else f"wrote {out}")
    return 0
