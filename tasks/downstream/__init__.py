"""Downstream evaluation with lm-evaluation-harness (``staged eval --tasks``): the door of this room.

No MLflow, no Prefect: a model and tokenizer in, scores out (the command line logs them through
tasks.registry). ``lm_eval`` is imported only when a task runs.
"""

from tasks.downstream.run import DEFAULT, TaskError, check, evaluate, names

__all__ = ["DEFAULT", "TaskError", "check", "evaluate", "names"]
