"""The equal-compute protocol's pure parts: equal FLOPs per arm, the test split, the fits and the law,
the growth moment kept out of the headline, and every arm of the JSON in the docs table (pure functions; no
training)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bench.equal import budgets as llama_budgets
from bench.equal.law import compute_fit, headline, law, multiplier
from bench.equal.study import MUP_JUMP, arms, baselines, equalised, heldout_split
from bench.suite.curves import Point
from bench.suite.spec import train_flops_per_token


def _flops(arm, preset) -> float:
    return sum(
        st.share * train_flops_per_token(preset.model.model_copy(update={"n_layers": st.n_layers})) for st in arm.stages
    )


def test_every_arm_gets_scratchs_flops():
    p = llama_budgets.preset("s")
    full = train_flops_per_token(p.model)
    every = arms(p.model.n_layers, 20.0)
    assert {"scratch", "small-1", "small-2", "small-4", "best", "gstack", "late-jump", "late-jump-mup"} == set(every)
    for name, arm in every.items():
        eq = equalised(arm, p)
        assert _flops(eq, p) == pytest.approx(full, rel=1e-9), name
        assert [s.n_layers for s in eq.stages] == [s.n_layers for s in arm.stages]
    mup = equalised(every["late-jump-mup"], p).stages
    assert mup[0].share / (mup[0].share + mup[1].share) == pytest.approx(MUP_JUMP)
    assert mup[1].lr_scale == pytest.approx(1 / math.sqrt(8))
    assert equalised(every["small-1"], p).stages[0].share > 2  # a 1-layer model gets many more tokens
    assert baselines(12) == [1, 3, 6]


class _Stream:
    def __init__(self, tokens):
        self.tokens = np.asarray(tokens, dtype=np.int64)

    def __len__(self):
        return len(self.tokens)

    def rows(self, starts, width):
        return np.stack([self.tokens[s : s + width] for s in starts])


class _Corpus:
    """The three things heldout_split reads of a TokenCorpus: the val stream, its eos id, the chunker."""

    context = 3

    def __init__(self, tokens, eos):
        self.val, self.manifest = _Stream(tokens), type("M", (), {"eos_id": eos})()

    def _chunks(self, stream, starts):
        seq = torch.from_numpy(stream.rows(starts, self.context + 1))
        return seq[:, :-1], seq[:, 1:]


def test_test_split_is_the_second_half_of_the_validation_documents():
    eos = 0
    docs = [[d] * n + [eos] for d, n in zip(range(1, 9), (30, 50, 20, 40, 35, 25, 45, 30))]  # doc d is all d
    corpus = _Corpus([t for doc in docs for t in doc], eos)
    val, test = heldout_split(corpus, 2, 2, 3)
    seen = [{int(t) for x, y in batches for t in torch.cat([x, y]).flatten()} - {eos} for batches in (val, test)]
    assert seen[0] and seen[1] and not seen[0] & seen[1]  # no document in both
    assert max(seen[0]) < min(seen[1])
    again = heldout_split(corpus, 2, 2, 3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(test, again[1]))  # fixed: no seed in it
    with pytest.raises(ValueError, match="eos"):
        heldout_split(_Corpus([1, 2, 3] * 20, None), 1, 1, 1)


def _run(name, seed, losses, flops_budget=100.0, size="s", budget=20.0, params=1000):
    pts = [Point(1, i, 0.0, i, flops_budget * i / (len(losses) - 1), v).as_dict() for i, v in enumerate(losses)]
    return {"schedule": name, "seed": seed, "points": pts, "final_val_loss": losses[-1], "size": size,
            "budget": budget, "params": params, "flops_budget": flops_budget, "boundaries": [{}]}  # fmt: skip


def test_headline_reports_not_reached_and_equal_flops_loss():
    runs = [_run("scratch", 1, [5, 4, 3, 2]), _run("fast", 1, [5, 2, 1.5, 1.4]), _run("slow", 1, [5, 4.5, 4, 3])]
    h = headline(runs)["s/20"]["arms"]
    assert h["scratch"]["flops_ratio"] == pytest.approx(1.0)
    assert h["fast"]["flops_ratio"] == pytest.approx(1 / 3)
    assert h["slow"]["flops_ratio"] is None and h["slow"]["reached"] == 0
    assert h["slow"]["final_test_loss"] == 3


def test_compute_fit_and_multiplier_recover_a_known_curve():
    e, a, alpha = 1.0, 2.0, 0.5
    runs = [
        _run("scratch", 1, [9, e + a * (c / 1e9) ** -alpha], flops_budget=c, budget=c)
        for c in (1e8, 4e8, 1.6e9, 6.4e9, 2.56e10)
    ]
    fit = compute_fit(runs)
    assert fit["alpha"] == pytest.approx(alpha, rel=1e-3)
    c = 1.6e9  # a schedule reaching the loss scratch reaches at 4x its compute has multiplier 4
    assert multiplier(fit, c, e + a * (4 * c / 1e9) ** -alpha) == pytest.approx(4, rel=1e-3)


def test_law_predicts_a_held_out_point():
    truth = lambda t, n: 0.3 - 0.1 * math.log(t) + 0.05 * math.log(n)  # noqa: E731
    pts = [
        {"tokens_per_param": t, "params": n, "y": truth(t, n)}
        for t, n in ((5, 3e4), (20, 3e4), (80, 3e4), (5, 6e4), (20, 6e4))
    ]
    fit = law(pts, held_out=4)
    assert fit["held_out"]["error"] == pytest.approx(0, abs=1e-9)
    assert fit["tpp_range"] == [5, 80] and fit["params_range"] == [3e4, 6e4]


def test_a_growth_moment_evaluation_never_meets_the_target():
    """Identity growth preserves the function: the eval at the grown model's step 0 is the small model's loss.
    Here it is below scratch's final loss, but no trained eval of the final stage gets there: not reached."""
    scratch = _run("scratch", 1, [5, 4, 3, 2])
    pts = [Point(1, 0, 0.0, 0, 0.0, 5.0), Point(1, 1, 0.0, 1, 30.0, 2.5), Point(1, 2, 0.0, 2, 40.0, 1.9)]
    pts += [Point(2, 2, 0.0, 2, 40.0, 1.9), Point(2, 3, 0.0, 3, 70.0, 2.2), Point(2, 4, 0.0, 4, 100.0, 2.1)]
    jump = {**_run("jump", 1, [5, 2.1]), "points": [p.as_dict() for p in pts], "final_val_loss": 2.1}
    arm = headline([scratch, jump])["s/20"]["arms"]["jump"]
    assert arm["flops_ratio"] is None and arm["reached"] == 0  # 40/100 = 0.4 if the growth moment counted
    assert arm["reached_at_growth_moment"] == 1 and arm["rows"][0]["growth_moment_loss"] == 1.9
    assert arm["delta_loss"] == pytest.approx(0.1)
    later = [*pts[:4], Point(2, 3, 0.0, 3, 70.0, 1.8)]  # a trained eval below the target: counted there
    jump = {**jump, "points": [p.as_dict() for p in later], "final_val_loss": 1.8}
    arm = headline([scratch, jump])["s/20"]["arms"]["jump"]
    assert arm["flops_ratio"] == pytest.approx(0.7)  # at that eval: no interpolation from the growth moment


@pytest.mark.parametrize("summary", ["llama-budgets.json", "llama-budgets-issue23.json"])
def test_every_arm_of_the_json_is_in_the_docs_table(summary):
    """A summary's (size, tokens/param, arm) rows, each in docs/benchmarks.md's tables, none omitted."""
    from repo import REPO_ROOT

    s = json.loads((REPO_ROOT / "docs" / summary).read_text())
    want = {(b["size"], f"{b['tokens_per_param']:g}", n) for b in s["budgets"] for n in b["arms"]}
    rows = set()
    for line in (REPO_ROOT / "docs" / "benchmarks.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].split(" ")[0] in s["sizes"] and cells[1].replace(".", "").isdigit():
            rows.add((cells[0].split(" ")[0], cells[1], cells[2]))
    assert want and want - rows == set(), f"arms of docs/{summary} missing from docs/benchmarks.md's tables"


def test_the_best_schedule_is_chosen_on_the_validation_half_never_on_test():
    from bench.equal.report import choose

    arms = {
        "scratch": {"final_val_loss": 3.0, "final_test_loss": 3.0},
        "a": {"final_val_loss": 2.9, "final_test_loss": 2.5},  # the better test loss: must not decide
        "b": {"final_val_loss": 2.8, "final_test_loss": 2.7},
    }
    tuned = {"a": {"best_value": 1.0}, "b": {"best_value": 2.0}}
    assert choose(arms, tuned)[0] == "b"
    older = {n: a | {"final_val_loss": None} for n, a in arms.items()}  # raw runs from before issue 28
    assert choose(older, tuned) == ("a", "tuning objective (validation half, tuning seeds)")
