"""Downstream tasks with lm-evaluation-harness, offline: the shipped ones (``default``) or any task lm_eval knows.

    scores = evaluate(model, tokenizer, ["default"])       # {"staged_arith": {"acc": 0.3, ...}, ...}

The shipped tasks are YAML + jsonl in ``tasks/downstream/data/`` (package data). lm_eval's ``json``
datasets need absolute data files, so each YAML is copied to a temporary directory with its
``data_files`` made absolute, and that directory is lm_eval's include path (with ``include``, the user's).
A task name lm_eval does not know, or a task file that does not parse, is a one-line TaskError.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import yaml

from models.errors import UserError

DATA = Path(__file__).parent / "data"
DEFAULT = ("staged_arith", "staged_words")  # --tasks default


class TaskError(UserError, ValueError):
    """An unknown task or a task file that does not parse: one line naming it."""


def _task_files(directory: Path, out: Path) -> None:
    for path in sorted(directory.glob("*.yaml")):
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise TaskError(f"task file {str(path)!r} does not parse{where}") from None
        if not isinstance(config, dict) or "task" not in config:
            raise TaskError(f"task file {str(path)!r} does not parse: no `task:` mapping")
        files = (config.get("dataset_kwargs") or {}).get("data_files")
        if isinstance(files, dict):
            config["dataset_kwargs"]["data_files"] = {k: str((path.parent / v).resolve()) for k, v in files.items()}
        (out / path.name).write_text(yaml.safe_dump(config, sort_keys=False))


def check(task: str) -> None:
    """A TaskError unless lm_eval knows ``task`` (the shipped ones are known without importing lm_eval)."""
    if task in DEFAULT:
        return
    from lm_eval.tasks import TaskManager

    if task not in TaskManager(verbosity="ERROR").all_tasks:
        raise TaskError(f"unknown task {task} (shipped: {', '.join(DEFAULT)})")


def names(tasks: list[str]) -> list[str]:
    return [t for name in tasks for t in (DEFAULT if name == "default" else (name,))]


def evaluate(model, tokenizer, tasks: list[str], include: Path | None = None, limit: int | None = None) -> dict:
    """{task: {metric: value}} of every task in ``tasks`` (``default`` = the shipped ones), scored offline."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from tasks.downstream.adapter import StagedLM

    wanted = names(tasks)
    with tempfile.TemporaryDirectory(prefix="staged-tasks-") as tmp:
        _task_files(DATA, Path(tmp))
        if include is not None:
            (Path(tmp) / "user").mkdir()
            _task_files(Path(include), Path(tmp) / "user")
        manager = TaskManager(include_path=tmp, verbosity="ERROR")
        if unknown := [t for t in wanted if t not in manager.all_tasks]:
            shipped = ", ".join(DEFAULT)
            raise TaskError(f"unknown task {', '.join(unknown)} (shipped: default = {shipped}; or --include DIR)")
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        out = lm_eval.simple_evaluate(
            model=StagedLM(model, tokenizer), tasks=wanted, task_manager=manager, limit=limit, log_samples=False
        )
    scores = {}
    for task in wanted:
        found = out["results"][task]
        scores[task] = {k.split(",")[0]: float(v) for k, v in found.items() if "," in k and "_stderr" not in k}
    return scores
