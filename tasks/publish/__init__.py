"""What people see of a run: Prefect artifacts while a stage trains (monitor.py), and after it, model cards
(card.py), the summary table and loss curve (report.py), the comparison tables (compare.py).

The door of this room: the three end-of-stage publications as Prefect tasks (retried like any task, each
with its own task run and failure report), and the names other rooms use.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from models.data.bytes import DataConfig
from tasks.publish.card import add_scores, write_card
from tasks.publish.compare import publish_comparison
from tasks.publish.monitor import ArtifactKeys, StageProgress, StageWatch, tag_flow_run
from tasks.publish.report import COLUMNS, allocation_line, plot_losses, publish_summary, summary_rows
from tasks.registry import Registry
from tasks.results import GateResult, StageResult

__all__ = [
    "COLUMNS",
    "allocation_line",
    "ArtifactKeys",
    "StageProgress",
    "StageWatch",
    "add_scores",
    "card",
    "comparison",
    "summary",
    "summary_rows",
    "tag_flow_run",
]


def _card_run_name() -> str:
    from prefect.runtime import task_run

    return f"card-v{task_run.parameters['results'][-1].ref.version}"


@task(name="model-card", task_run_name=_card_run_name, persist_result=False)
def card(registry: Registry, results: list[StageResult], data: DataConfig, gate: GateResult | None) -> str:
    """The model card of ``results[-1]``'s version (curves: every stage in ``results``)."""
    return write_card(registry, results, data, gate)


@task(name="summary", task_run_name="summary", persist_result=False)
def summary(results: list[StageResult], png: Path, registry: Registry, parent_run_id: str | None, run_name: str) -> str:
    """The loss curve at ``png`` and the summary table, in Prefect and on the MLflow runs."""
    return publish_summary(results, plot_losses(results, png), registry, parent_run_id, run_name)


@task(name="comparison", task_run_name="comparison", persist_result=False)
def comparison(registry: Registry, results: list[StageResult], gate: GateResult | None, alias: str) -> str:
    """This run's stages and the champion history, in Prefect and on the last stage's run."""
    return publish_comparison(registry, results, gate, alias)
