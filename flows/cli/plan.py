"""``staged plan``: which schedule to run for a target model and a token budget, when to grow, the predicted
saving (bench/plan.py, from the law in docs/llama-budgets.json), and a pipeline config ``staged run`` accepts."""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.cli.errors import fail


def add_plan_command(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser("plan", help="schedule, growth points and predicted saving for a model and a token budget")
    plan.add_argument("--tokens", required=True, type=int, help="training tokens of the whole run")
    target = plan.add_mutually_exclusive_group()
    target.add_argument("--config", help="a pipeline YAML: its model (final stage's depth) is the target")
    target.add_argument("--size", choices=["s", "l"], help="a llama-budgets size (default: s)")
    plan.add_argument("--law", help="the fitted law (default: docs/llama-budgets.json of this checkout)")
    plan.add_argument("--out", help="write the planned pipeline config here (YAML)")
    plan.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    import yaml

    from bench.plan import LAW, OutOfRange, make_plan, target_preset

    law_path = Path(args.law) if args.law else LAW
    if not law_path.is_file():
        fail(f"--law {str(law_path)!r}: no such file (bench/equal/report.py writes it)")
    if args.tokens <= 0:
        fail(f"--tokens {args.tokens}: must be positive")
    model = None
    if args.config:
        try:
            tree = yaml.safe_load(Path(args.config).read_text())
            model = dict(tree["model"]) | {"n_layers": tree["stages"][-1]["n_layers"]}
        except (OSError, yaml.YAMLError, KeyError, TypeError, IndexError) as e:
            fail(f"--config {args.config!r}: not a pipeline config with model and stages ({type(e).__name__})")
        if model.get("arch") != "llama":
            fail(f"--config {args.config!r}: the law is fitted on the llama family, not {model.get('arch')!r}")
        model.pop("vocab_size", None)
    try:
        plan, cfg = make_plan(target_preset(args.size, model), args.tokens, json.loads(law_path.read_text()))
    except OutOfRange as e:
        fail(str(e))
    except ValueError as e:
        fail(str(e).splitlines()[0])
    print("\n".join(plan.lines()))
    if args.out:
        Path(args.out).write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_defaults=True), sort_keys=False))
        print(f"wrote {args.out}: staged run {args.out}")
    return 0
