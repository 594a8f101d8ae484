"""`staged plan` (tasks/plan/planner.py) on hand-made laws and on the shipped one: the measured figure at a
measured point, interpolation that passes through the points and never leaves their hull, a one-line refusal
outside it, the smaller model named where it wins, and never an arm whose own figure is a loss."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flows.cli.main import main
from tasks.plan.planner import OutOfRange, load_law, plan, weights


def _arm(ratio, delta, boot=True):
    return {
        "flops_ratio": ratio,
        "flops_ratio_ci95": None if ratio is None else [ratio * 0.95, ratio * 1.05],
        "flops_ratio_boot": None if ratio is None or not boot else [ratio * 0.95, ratio, ratio * 1.05] * 10,
        "delta_loss": delta,
        "delta_loss_ci95": [delta - 0.01, delta + 0.01],
        "delta_loss_boot": [delta - 0.01, delta, delta + 0.01] * 10,
        "reached": 3,
        "n": 3,
    }


def _law(points) -> dict:
    """points: (size, tpp, params, ranking, {arm: (ratio, delta)})"""
    return {
        "source": "hand-made",
        "family": "llama",
        "sizes": {},
        "hparams": {},
        "points": [
            {
                "size": s,
                "tokens_per_param": t,
                "params": n,
                "seeds": 3,
                "ranking": rk,
                "arms": {a: _arm(*v) for a, v in arms.items()},
            }
            for s, t, n, rk, arms in points
        ],
    }


LAW = _law(
    [
        (
            "s",
            5.0,
            1000,
            ["jump", "best"],
            {"scratch": (1.0, 0.0), "small-1": (0.3, -0.2), "jump": (0.5, -0.1), "best": (0.6, -0.05)},
        ),
        (
            "s",
            80.0,
            1000,
            ["jump", "best"],
            {"scratch": (1.0, 0.0), "small-1": (None, 0.1), "jump": (1.2, 0.02), "best": (0.9, -0.01)},
        ),
        (
            "l",
            5.0,
            4000,
            ["jump", "best"],
            {"scratch": (1.0, 0.0), "small-1": (0.4, -0.1), "jump": (0.5, -0.1), "best": (0.7, -0.03)},
        ),
    ]
)


def test_at_a_measured_point_the_measured_figure_with_its_interval():
    p = plan(LAW, 1000, 5000)
    assert p.measured["tokens_per_param"] == 5.0 and p.rests_on == ["s/5 (3 held-out seeds)"]
    assert p.recommended.arm == "jump" and p.recommended.flops_ratio["mean"] == 0.5
    text = "\n".join(p.lines())
    assert "jump saves 50% [95% 48% to 52%]" in text
    assert "small-1 from scratch reaches a lower test loss" in text and "lower than jump's too" in text


def test_never_recommends_an_arm_whose_own_figure_is_a_loss():
    p = plan(LAW, 1000, 80_000)  # jump ranks first on validation but needs 1.2x scratch's FLOPs here
    assert p.recommended.arm == "best" and p.passed_over == ["jump"]
    assert p.smaller is None  # small-1's loss is higher than the target's here: nothing named
    none = _law([("s", 5.0, 1000, ["jump"], {"scratch": (1.0, 0.0), "jump": (None, 0.1)})])
    p = plan(none, 1000, 5000)
    assert p.recommended is None and "schedule: none" in "\n".join(p.lines())


def test_interpolation_passes_through_the_points_and_stays_inside_them():
    pts = [(5.0, 1000), (80.0, 1000), (5.0, 4000)]
    assert weights(pts, 5.0, 1000) == pytest.approx([1, 0, 0])
    w = weights(pts, 20.0, 1000)  # halfway in log tpp along the s edge
    assert w == pytest.approx([0.5, 0.5, 0])
    mid = plan(LAW, 1000, 20_000)
    assert mid.measured is None and mid.recommended.arm == "jump"  # 0.5 and 1.2 at the ends: sqrt(0.6) between
    assert mid.recommended.flops_ratio["mean"] == pytest.approx(np.sqrt(0.5 * 1.2))
    assert mid.rests_on == ["s/5", "s/80"]
    assert weights(pts, 80.0, 4000) is None  # the never-measured corner of the rectangle
    assert weights([(5.0, 1000), (80.0, 1000)], 20.0, 1000) == pytest.approx([0.5, 0.5])  # one size: a segment
    assert weights([(5.0, 1000), (80.0, 1000)], 20.0, 2000) is None


def test_refuses_outside_the_hull_in_one_line():
    with pytest.raises(OutOfRange, match="outside the measured points"):
        plan(LAW, 4000, 320_000)


def test_cli_refuses_outside_the_hull_with_exit_2(tmp_path, capsys):
    law = tmp_path / "law.json"
    law.write_text(json.dumps(load_law()))
    with pytest.raises(SystemExit) as e:
        main(["plan", "--size", "l", "--tokens", str(80 * 57_240), "--law", str(law)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "outside the measured points" in err


def test_the_shipped_law_at_a_measured_point(capsys):
    assert main(["plan", "--size", "l", "--tokens", str(20 * 57_240)]) == 0
    out = capsys.readouterr().out
    assert "the measured point l/20" in out and "saves 11% [95%" in out
    assert "from the previous protocol's runs" in out and "small-4 from scratch reaches a lower test loss" in out
    law = load_law()
    growth_only = {
        (p["size"], p["tokens_per_param"])
        for p in law["points"]
        if p["arms"]["late-jump-mup"]["reached_at_growth_moment"]
    }
    assert growth_only == {("s", 5.0), ("s", 20.0), ("l", 5.0)}  # issue 28: 0.517, 0.515, 0.484 were the growth moment
    assert all(p["arms"]["late-jump-mup"]["flops_ratio"] is None for p in law["points"])


def test_plan_writes_a_pipeline_config(tmp_path, capsys):
    from tasks.config import PipelineConfig

    out = tmp_path / "plan.yaml"
    assert main(["plan", "--size", "s", "--tokens", str(20 * 28_944), "--out", str(out)]) == 0
    import yaml

    cfg = PipelineConfig.model_validate(yaml.safe_load(out.read_text()))
    assert [s.n_layers for s in cfg.stages] == [1, 8]  # late-jump: 1 -> 8 layers


@pytest.mark.parametrize(
    "args, says",
    [
        (["--size", "q", "--tokens", "5"], "the law measured sizes s, l"),
        (["--tokens", "0"], "must be positive"),
        (["--tokens", "5", "--law", "/nonexistent/law.json"], "not a readable law file"),
        (["--tokens", "5", "--config", "configs/demo.yaml"], "measured on the llama family, not gpt"),
        (["--tokens", "5", "--config", "configs/moe-upcycle.yaml"], "measured on the llama family, not mixtral"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, says, capsys, monkeypatch):
    from repo import REPO_ROOT

    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises(SystemExit) as e:
        main(["plan", *args])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and says in err
