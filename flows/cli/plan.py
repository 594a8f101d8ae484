"""``staged plan``: what a staged schedule saves for a target model at a token budget, as measured (tasks/plan: the
law shipped as package data), and optionally the pipeline config ``staged run`` accepts for it."""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.cli.errors import fail


def add_plan_command(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser("plan", help="the measured saving of a staged schedule for a model and a token budget")
    plan.add_argument("--tokens", required=True, type=int, help="training tokens of the whole run")
    target = plan.add_mutually_exclusive_group()
    target.add_argument("--config", help="a pipeline YAML: its model (final stage's depth) is the target")
    target.add_argument("--size", help="a measured size of the law (default: its first; a wrong one lists them)")
    plan.add_argument("--law", help="another law file (bench/equal/planlaw.py writes one; default: the shipped one)")
    plan.add_argument("--out", help="write the recommended schedule's pipeline config here (YAML)")
    plan.set_defaults(func=cmd_plan)


def _target(args: argparse.Namespace, law: dict) -> dict:
    """The target model as a config dict: a measured size of the law, or a pipeline YAML's model."""
    import yaml

    from models.families.lookup import FAMILIES

    if not args.config:
        size = args.size or next(iter(law["sizes"]))
        if size not in law["sizes"]:
            fail(f"--size {size!r}: the law measured sizes {', '.join(law['sizes'])}")
        return law["sizes"][size]
    try:
        tree = yaml.safe_load(Path(args.config).read_text())
        model = dict(tree["model"]) | {"n_layers": tree["stages"][-1]["n_layers"]}
        for stage in tree["stages"][1:]:  # an upcycled pipeline ends in its MoE family (models/growth.py)
            growth = stage.get("growth") or {}
            if isinstance(growth, dict) and growth.get("operator") == "upcycle":
                arch = model.get("arch", "gpt")
                if (moe := FAMILIES[arch].moe if arch in FAMILIES else None) is None:
                    fail(f"--config {args.config!r}: cannot upcycle a {arch} model: it has no MoE counterpart")
                model |= {"arch": moe, "experts": growth.get("experts"), "top_k": growth.get("top_k")}
    except (OSError, yaml.YAMLError, KeyError, TypeError, IndexError, AttributeError) as e:
        fail(f"--config {args.config!r}: not a pipeline config with model and stages ({type(e).__name__})")
    if model.get("arch") != law["family"]:
        arch = model.get("arch") or "gpt (the default)"
        fail(f"--config {args.config!r}: the law is measured on the {law['family']} family, not {arch}")
    first = next(iter(law["sizes"].values()))
    return first | model | {"vocab_size": model.get("vocab_size", first["vocab_size"])}


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from models.families.lookup import family_of, parse_config
    from tasks.plan.planner import OutOfRange, load_law, plan

    if args.tokens <= 0:
        fail(f"--tokens {args.tokens}: must be positive")
    try:
        law = json.loads(Path(args.law).read_text()) if args.law else load_law()
    except (OSError, ValueError) as e:
        fail(f"--law {args.law!r}: not a readable law file ({type(e).__name__})")
    try:
        model = parse_config(_target(args, law))
        p = plan(law, family_of(model).num_params(model), args.tokens)
    except OutOfRange as e:
        fail(str(e))
    except ValueError as e:
        fail(str(e).splitlines()[0])
    print("\n".join(p.lines()))
    if args.out:
        if p.recommended is None:
            fail("--out: no staged schedule saves here, so there is no staged config to write")
        import yaml

        from bench.equal.planlaw import planned_config

        try:
            cfg = planned_config(law, p.closest, model, p.recommended.arm, args.tokens)
        except ValueError as e:
            fail(f"--out: {str(e).splitlines()[0]}")
        Path(args.out).write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_defaults=True), sort_keys=False))
        print(f"wrote {args.out}: staged run {args.out}")
    return 0
