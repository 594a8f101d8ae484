"""``staged eval MODEL_URI --tasks NAMES``: downstream tasks with lm-evaluation-harness, offline.

    staged eval models:/staged-smoke/3 --tasks default [--include DIR] [--limit N]

``default`` is the shipped tasks (tasks/downstream/data/: a multiple-choice and a loglikelihood task);
any task lm_eval knows runs too when its data is local, and ``--include DIR`` adds YAML task files.
Scores are printed as a table, logged as metrics ``eval/<task>/<metric>`` on the version's run and
added to its model card. An unknown task or a task file that does not parse: one line, exit 2.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from flows.cli.errors import fail


def eval_tasks(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # nothing downloads: the tasks' data is local
        os.environ.setdefault(var, "1")
    from tasks.downstream import TaskError, evaluate
    from tasks.downstream.adapter import GenerationUnsupported
    from tasks.publish import add_scores
    from tasks.registry import load_version, log_scores, open_registry, resolve, version_ref

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        fail("--tasks names no task (e.g. --tasks default)")
    if args.include and not Path(args.include).is_dir():
        fail(f"--include {args.include!r} is not a directory")
    registry = open_registry(args.workdir)
    mv = resolve(registry, args.model_uri)
    model, tokenizer = load_version(registry, version_ref(mv))
    try:
        scores = evaluate(model, tokenizer, tasks, Path(args.include) if args.include else None, args.limit)
    except (TaskError, GenerationUnsupported) as e:
        fail(str(e))
    except Exception as e:  # lm_eval's own errors on a task's data (a missing or malformed file): one line
        fail(f"tasks {', '.join(tasks)}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}")
    log_scores(registry, mv.run_id, scores)
    add_scores(registry, mv.name, str(mv.version), mv.run_id, scores)
    table = Table(title=f"{mv.name} version {mv.version}: downstream tasks (lm-evaluation-harness)")
    for column in ("task", "metric", "value"):
        table.add_column(column, justify="right")
    for task, row in scores.items():
        for metric, value in row.items():
            table.add_row(task, metric, f"{value:.4f}")
    Console().print(table)
    return 0
