"""GPU-seconds: each stage holds its own hardware (processes x wall), against one allocation sized for the
largest stage held for the whole run; a skipped stage costs this run nothing."""

from tasks.publish.report import allocation_line, gpu_seconds, summary_rows
from tasks.registry import ModelRef
from tasks.results import StageResult
from tests.versions import stage1_tags


def _result(stage: int, processes: int, seconds: float, skipped: bool = False) -> StageResult:
    tags = stage1_tags("ab" * 32, f"k{stage}").model_dump() | {"stage": stage}
    ref = ModelRef(name="m", version=str(stage), run_id="r", source="s", **tags)
    used = 0.0 if skipped else processes * seconds
    return StageResult(
        ref=ref,
        params=1,
        steps=1,
        val_loss_init=1.0,
        val_loss=1.0,
        seconds=seconds,
        skipped=skipped,
        train_curve=[],
        val_curve=[(0, 1.0)],
        processes=processes,
        gpu_seconds=used,
    )


def test_stages_hold_their_own_hardware_not_the_largest_stages():
    results = [_result(1, 1, 100.0), _result(2, 2, 50.0), _result(3, 8, 25.0)]
    assert gpu_seconds(results) == (100 + 100 + 200, 8 * 175, 8)
    line = allocation_line(results)
    assert line == (
        "GPU-seconds (processes x wall): 400.0 for this run's stages (0.29 of it); "
        "one allocation of 8 processes held for the whole run: 1400.0"
    )
    assert [row["GPU s"] for row in summary_rows(results)] == [100.0, 100.0, 200.0]


def test_a_skipped_stage_costs_this_run_nothing():
    results = [_result(1, 4, 0.0, skipped=True), _result(2, 1, 10.0)]
    assert gpu_seconds(results) == (10.0, 10.0, 1)
    assert summary_rows(results)[0]["GPU s"] == "skipped"
