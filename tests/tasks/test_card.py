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


def test_the_same_curves_are_drawn_once(tmp_path, monkeypatch):
    """The summary's plot and the last card's are the same curves: one drawing, the same PNG in both places."""
    from types import SimpleNamespace

    from tasks.publish import report

    ref = SimpleNamespace(name="plot-once", stage=1, n_layers=3, version="1")
    results = [SimpleNamespace(ref=ref, train_curve=[(1, 3.0), (2, 2.5)], val_curve=[(0, 3.5), (2, 2.6)])]
    drawn = []
    draw = report._draw
    monkeypatch.setattr(report, "_draw", lambda rs: drawn.append(1) or draw(rs))
    a, b = report.plot_losses(results, tmp_path / "a.png"), report.plot_losses(results, tmp_path / "card" / "b.png")
    assert len(drawn) == 1 and a.read_bytes() == b.read_bytes() and a.read_bytes()[:4] == b"\x89PNG"
    results[0].val_curve.append((3, 2.4))  # other curves: drawn again
    assert report.plot_losses(results, tmp_path / "c.png").read_bytes() != a.read_bytes() and len(drawn) == 2
