"""Comparison tables: stages of one run and the champion history across runs."""

import pytest

from tasks.publish.compare import champion_history, stage_rows
from tasks.registry import Registry

pytestmark = pytest.mark.integration


def test_champion_history_lists_every_promotion_across_runs(gated_runs):
    workdir, snaps = gated_runs
    history = champion_history(Registry.resolve(workdir), "staged-smoke")
    assert [(h["version"], h["replaced"], h["current"]) for h in history] == [("3", "", ""), ("6", "3", "yes")]


def test_stage_rows_compare_the_stages_of_one_run(gated_runs):
    workdir, snaps = gated_runs
    rows = stage_rows(Registry.resolve(workdir), snaps[2]["results"])
    assert [r["version"] for r in rows] == ["4", "5", "6"] and [r["layers"] for r in rows] == [3, 6, 12]
    assert rows[0]["Δ vs parent"] == "" and rows[1]["Δ vs parent"] < 0
    assert rows[2]["gate"] == "promoted" and "champion" in rows[2]["aliases"] and rows[1]["growth"] == "stack"
