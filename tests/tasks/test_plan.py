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


# the shipped law: docs/llama-budgets.json (issue 28's fair protocol, CPU preset), one 2-layer target
TARGET = 14_928  # parameters of its size 2L
AT_52, AT_178 = 778_200, 2_654_198  # its two measured budgets' tokens: 52.13 and 177.8 tokens/param


def test_cli_refuses_outside_the_hull_with_exit_2(tmp_path, capsys):
    law = tmp_path / "law.json"
    law.write_text(json.dumps(load_law()))
    with pytest.raises(SystemExit) as e:
        main(["plan", "--size", "2L", "--tokens", str(20 * TARGET), "--law", str(law)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "outside the measured points" in err


def test_the_shipped_law_at_its_measured_points(capsys):
    assert main(["plan", "--size", "2L", "--tokens", str(AT_178)]) == 0
    out = capsys.readouterr().out
    assert "the measured point fair-cpu/177.8" in out and "2x-once saves 2% [95% 0% to 4%]" in out
    assert "from fair-cpu" in out and "smaller model" not in out  # small-1 ends 0.076 nats higher there
    assert main(["plan", "--size", "2L", "--tokens", str(AT_52)]) == 0
    out = capsys.readouterr().out
    assert "schedule: none" in out and "small-1 from scratch reaches a lower test loss" in out


def test_the_previous_protocols_law_drops_its_growth_moment_ratios():
    """issue 28: late-jump-mup's 0.517, 0.515, 0.484 in the issue-23 runs were the growth moment's eval."""
    from repo import REPO_ROOT

    from bench.equal.planlaw import make_law

    law = make_law(json.loads((REPO_ROOT / "docs" / "llama-budgets-issue23.json").read_text()))
    growth_only = {
        (p["size"], p["tokens_per_param"])
        for p in law["points"]
        if p["arms"]["late-jump-mup"]["reached_at_growth_moment"]
    }
    assert growth_only == {("s", 5.0), ("s", 20.0), ("l", 5.0)}
    assert all(p["arms"]["late-jump-mup"]["flops_ratio"] is None for p in law["points"])
    assert plan(law, 57_240, 20 * 57_240).recommended is not None  # still a law the planner reads


def test_plan_writes_the_pipeline_config_of_the_arm_as_tuned_at_its_point(tmp_path, capsys):
    import yaml

    from tasks.config import PipelineConfig

    out = tmp_path / "plan.yaml"
    assert main(["plan", "--size", "2L", "--tokens", str(AT_178), "--out", str(out)]) == 0
    cfg = PipelineConfig.model_validate(yaml.safe_load(out.read_text()))
    tuned = next(p for p in load_law()["points"] if p["tokens_per_param"] == 177.8)["tuned"]["2x-once"]
    assert [s.n_layers for s in cfg.stages] == [1, 2]  # 2x-once: 1 -> 2 layers
    assert cfg.train.lr == pytest.approx(tuned["hparams"]["lr"]) and tuned["knobs"]["point"] == 0.3
    steps = round(AT_178 / (cfg.train.batch_size * cfg.model.context))  # scratch's 648 steps of the 2-layer target
    assert cfg.stages[-1].steps == round(0.7 * steps)  # the growth at its tuned 0.3 of the FLOPs, not 0.5
    assert "eval_every" not in out.read_text() and cfg.train.eval_every == 50  # evaluated as any run, not off
    with pytest.raises(SystemExit) as e:  # nothing saves at 52 tokens/param: no config, one line
        main(["plan", "--size", "2L", "--tokens", str(AT_52), "--out", str(tmp_path / "none.yaml")])
    assert e.value.code == 2 and "no staged schedule saves here" in capsys.readouterr().err
    assert not (tmp_path / "none.yaml").exists()


@pytest.mark.parametrize(
    "args, says",
    [
        (["--size", "q", "--tokens", "5"], "the law measured sizes 2L"),
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
