"""Model cards: architecture, lineage with operators and steps, data range, metrics, code, loss curve."""

from pathlib import Path

import mlflow
import pytest

from tasks.registry import Registry

pytestmark = pytest.mark.integration


def test_every_version_has_a_card_with_lineage_and_a_loss_curve(gated_runs, tmp_path):
    workdir, _ = gated_runs
    client = Registry.resolve(workdir).client()
    mv = client.get_model_version("staged-smoke", "6")
    card = mlflow.artifacts.load_text(mv.tags["model_card"])
    assert card.startswith("# staged-smoke version 6: stage 3, 12 layers")
    assert "120,000 parameters" in card and "d_model 32" in card
    for row in ("| 4 | 1 | 3 | none | 20 |", "| 5 | 2 | 6 | stack | 10 |", "| 6 | 3 | 12 | stack | 5 |"):
        assert row in card
    assert "| data cursor (sequences) | 240 → 280 |" in card  # 8 x (20 + 10) -> + 8 x 5
    assert "1,280 / 8,960 (batch 8)" in card  # bytes this stage / all stages, context 32
    assert f"`{mv.tags['config_hash']}`" in card and f"`{mv.tags['git_commit']}`" in card
    assert "promoted" in card  # the gate's decision when the card was last written
    assert mv.description.startswith("# staged-smoke version 6")
    png = Path(
        mlflow.artifacts.download_artifacts(
            mv.tags["model_card"].replace("MODEL_CARD.md", "loss.png"), dst_path=str(tmp_path)
        )
    )
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
    for v in client.search_model_versions("name = 'staged-smoke'"):
        assert v.tags["model_card"] and v.tags["data_config"].startswith("{")
