"""The evaluation gate: decisions, margins, tags, and the champion alias across pipeline runs."""

import math

import pytest
from repo import REPO_ROOT

from tasks.gate import decide


def test_decide_promotes_without_champion_and_only_beyond_the_margin():
    assert decide(3.0, None, 0.01)[0]
    assert decide(3.0, 3.5, 0.01)[0]
    assert not decide(3.0, 3.005, 0.01)[0]  # better, but not by the margin
    assert not decide(3.0, 3.01, 0.01)[0]  # exactly the margin is not enough
    assert not decide(3.6, 3.5, 0.0)[0]


@pytest.mark.integration
def test_gate_promotes_the_better_run_and_refuses_the_worse(gated_runs):
    _, (first, strict, better, worse_again) = gated_runs
    # 1: no champion yet
    assert first["tags"]["gate_decision"] == "promoted" and first["champion"] == first["version"] == "3"
    assert first["tags"]["gate_champion_before"] == ""
    # 2: the better run's version 6, but the margin (100) is not met: refused, champion untouched
    assert strict["version"] == "6" and strict["tags"]["gate_decision"] == "refused"
    assert strict["champion"] == "3" and strict["tags"]["gate_champion_before"] == "3"
    assert "margin 100" in strict["tags"]["gate_reason"]
    gain = float(strict["tags"]["gate_champion_val_loss"]) - float(strict["tags"]["gate_val_loss"])
    assert 0.01 < gain < 100
    # 3: same version, default margin 0.01: promoted; the stages were not retrained
    assert all(r.skipped for r in better["results"])
    assert better["tags"]["gate_decision"] == "promoted" and better["champion"] == "6"
    assert better["tags"]["gate_promoted_at"] and better["tags"]["gate_margin"] == "0.01"
    # 4: the worse run's version against the new champion: refused, champion stays 6
    assert worse_again["version"] == "3" and worse_again["tags"]["gate_decision"] == "refused"
    assert worse_again["champion"] == "6" and worse_again["tags"]["gate_champion_before"] == "6"
    assert worse_again["tags"]["gate_promoted_at"] == first["tags"]["gate_promoted_at"]  # history is kept
    for snap in gated_runs[1]:
        tags = snap["tags"]
        assert float(tags["gate_bpb"]) == pytest.approx(float(tags["gate_val_loss"]) / math.log(2), rel=1e-5)
        assert tags["gate_sample"].startswith("def ") and tags["gate_metric"] == "val_loss"


@pytest.mark.integration
def test_gate_report_is_logged_on_the_candidates_run(gated_runs):
    import mlflow

    from tasks.registry import Registry

    workdir, snaps = gated_runs
    registry = Registry.resolve(workdir)
    mv = registry.client().get_model_version("staged-smoke", "3")
    text = mlflow.artifacts.load_text(f"{registry.client().get_run(mv.run_id).info.artifact_uri}/gate/gate.md")
    assert "REFUSED" in text and "champion before | 6" in text and "bits/byte" in text


@pytest.mark.integration
def test_every_stage_gates_each_version_in_order(prefect_harness, workdir):

    from flows.staged import staged_training
    from tasks.config import load_config
    from tasks.registry import Registry

    smoke = REPO_ROOT / "configs" / "smoke.yaml"
    config = load_config(
        smoke, ["gate.every_stage=true", "gate.margin=0", "stages.0.steps=3", "stages.1.steps=0", "stages.2.steps=0"]
    )
    staged_training(config, str(workdir))
    client = Registry.resolve(workdir).client()
    tags = [client.get_model_version("staged-smoke", v).tags for v in ("1", "2", "3")]
    assert tags[0]["gate_decision"] == "promoted" and tags[0]["gate_champion_before"] == ""
    assert [t["gate_champion_before"] for t in tags[1:]] != ["", ""]  # each later stage met a champion
    champion = str(client.get_registered_model("staged-smoke").aliases["champion"])
    assert all(t["gate_decision"] in {"promoted", "refused"} for t in tags)
    assert champion == max((t for t in tags if t["gate_decision"] == "promoted"), key=lambda t: t["stage"])["stage"]
