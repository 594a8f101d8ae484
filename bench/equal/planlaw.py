"""The law `staged plan` ships (tasks/plan/law.json, package data) from an equal-compute summary
(bench/equal/report.py's docs/llama-budgets.json).

    python -m bench.equal.planlaw docs/llama-budgets.json --out tasks/plan/law.json

Per measured point, every arm's figures with paired bootstrap 95% intervals over the held-out seeds (FLOPs to
scratch's final test loss / scratch's, read after >= 1 trained step of the final stage only; final test loss -
scratch's) and the validation ranking of the staged arms, and the 200 bootstrap means each interval was read
from: the planner (tasks/plan/planner.py) interpolates figures and means between the points, never beyond them.

A summary from before issue 28 (no ``delta_loss`` in its rows: the previous protocol's runs) is first re-read
under the new rules: a FLOPs ratio equal to the arm's growth-moment share of scratch's FLOPs was met by the eval
at the growth moment (the small model's loss, as identity growth preserves it) and is dropped as not measured;
the staged arms are ranked by their tuning objective (validation half), the only validation figure those runs have.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.equal import budgets as llama_budgets
from bench.equal.law import from_scratch
from bench.equal.study import arms, equalised
from bench.suite.curves import paired_bootstrap
from bench.suite.spec import budget, train_flops_per_token

RESAMPLES = 200
PREVIOUS = (
    "from the previous protocol's runs (docs/llama-budgets-issue23.json, issue 23), re-read under issue 28's rules"
)


def growth_share(size: str, tpp: float, name: str) -> float | None:
    """The FLOPs an arm spends before its final stage, over scratch's budget (None for a one-stage arm)."""
    p = llama_budgets.preset(size)
    b, arm = budget(p, tpp), equalised(arms(p.model.n_layers, tpp)[name], p)
    if len(arm.stages) == 1:
        return None
    per_step = [
        b.tokens_per_step * train_flops_per_token(p.model.model_copy(update={"n_layers": s.n_layers}))
        for s in arm.stages
    ]
    spent = sum(max(1, round(s.share * b.scratch_steps)) * f for s, f in zip(arm.stages[:-1], per_step))
    return spent / (b.scratch_steps * per_step[-1])


def renew(summary: dict) -> dict:
    """A pre-issue-28 summary's rows under the new rules (see the module docstring), aggregated again."""
    for b in summary["budgets"]:
        for name, a in b["arms"].items():
            share = None if from_scratch(name) else growth_share(b["size"], b["tokens_per_param"], name)
            for r in a["rows"]:
                r["delta_loss"] = r["final_test_loss"] - r["target_test_loss"]
                r["reached_at_growth_moment"] = bool(
                    share and r["flops_ratio"] and abs(r["flops_ratio"] - share) < 2e-3
                )
                if r["reached_at_growth_moment"]:
                    r["flops_ratio"] = None  # met by the growth-moment eval: the trained crossing was not recorded
            ratio = paired_bootstrap([r["flops_ratio"] for r in a["rows"]])
            delta = paired_bootstrap([r["delta_loss"] for r in a["rows"]])
            a |= {"flops_ratio": ratio["mean"], "flops_ratio_ci95": ratio["ci95"], "reached": ratio["reached"]}
            a |= {"delta_loss": delta["mean"], "delta_loss_ci95": delta["ci95"]}
            a["reached_at_growth_moment"] = sum(r["reached_at_growth_moment"] for r in a["rows"])
    return summary


def ranking(b: dict, tuned: dict) -> list[str]:
    """The staged arms, best first, by validation data only (held-out runs' validation half, else tuning's)."""
    staged = [n for n in b["arms"] if not from_scratch(n)]
    if all(b["arms"][n].get("final_val_loss") is not None for n in staged):
        return sorted(staged, key=lambda n: b["arms"][n]["final_val_loss"])
    return sorted(staged, key=lambda n: tuned[n]["best_value"])


def boot_means(values: list[float | None], seed: int = 0) -> list[float] | None:
    """The paired bootstrap's resampled means (seeds drawn with replacement), which the planner interpolates
    between points for its interval; None if a seed has no value or there is one seed (no interval)."""
    if len(values) < 2 or any(v is None for v in values):
        return None
    x = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(x), (RESAMPLES, len(x)))
    return [round(float(v), 5) for v in x[idx].mean(axis=1)]


def _boot(a: dict) -> dict:
    return {
        "flops_ratio_boot": boot_means([r["flops_ratio"] for r in a["rows"]]),
        "delta_loss_boot": boot_means([r["delta_loss"] for r in a["rows"]]),
        "reached_at_growth_moment": a.get("reached_at_growth_moment", 0),
    }


def sizes(summary: dict) -> dict:
    """`staged plan --size` names: the measured sizes, or (issue 28's protocol) each right-sized target as
    '<depth>L' (the reference width at the depth the sweep chose)."""
    if "right_sizing" not in summary:
        return summary["sizes"]
    (ref,) = summary["sizes"].values()
    depths = sorted({s["target"] for s in summary["right_sizing"].values()})
    return {f"{d}L": ref | {"n_layers": d} for d in depths}


def make_law(summary: dict) -> dict:
    previous = not any("delta_loss" in r for b in summary["budgets"] for r in b["arms"]["scratch"]["rows"])
    if previous:
        summary = renew(summary)
    tuned = summary["tuning"]["arms"]
    at = {f"{s['tokens_per_param']:g}": k for k, s in summary.get("right_sizing", {}).items()}  # -> by_budget key
    points = []
    for b in summary["budgets"]:
        keep = ("flops_ratio", "flops_ratio_ci95", "reached", "n", "final_test_loss", "delta_loss", "delta_loss_ci95")
        point = {
            "size": b["size"],
            "tokens_per_param": b["tokens_per_param"],
            "params": b["params"],
            "seeds": len(b["arms"]["scratch"]["rows"]),
            "ranking": ranking(b, tuned),
            "arms": {n: {k: a.get(k) for k in keep} | _boot(a) for n, a in b["arms"].items()},
        }
        if not previous:  # issue 28's protocol tunes every arm at every budget: `staged plan --out` uses the point's
            here = summary["tuning"]["by_budget"][at[f"{b['tokens_per_param']:g}"]]
            point["tuned"] = {n: {"hparams": t["best_params"], "knobs": t["knobs"]} for n, t in here.items()}
        points.append(point)
    law = {"source": PREVIOUS if previous else f"from {summary['preset']} ({summary['command']})", "family": "llama"}
    law |= {"sizes": sizes(summary), "points": points}
    # the previous protocol tuned once for every point; issue 28's names its preset (bench/equal/fair_presets.py)
    return law | (
        {"hparams": {n: t["best_params"] for n, t in tuned.items()}} if previous else {"preset": summary["preset"]}
    )


def planned_config(law: dict, point: dict, model, arm: str, tokens: int):
    """`staged plan --out`: the pipeline config of ``arm`` ending in ``model`` on ``tokens`` tokens, tuned as at
    ``point`` (the measured point the plan is closest to; the previous protocol's one tuning). The benchmark
    evaluated on batches of its own (train()'s evaluations off); the user's run evaluates as any pipeline does."""
    if "preset" not in law:
        cfg = llama_budgets.planned_config(model, arm, tokens, law["hparams"][arm])
    else:
        from bench.equal import fair
        from bench.equal.fair_presets import by_name

        setup = point["tuned"][arm]
        cfg = fair.planned_config(by_name(law["preset"]), model, arm, tokens, setup["hparams"], setup["knobs"])
    fields = type(cfg.train).model_fields
    train = cfg.train.model_copy(update={k: fields[k].default for k in ("eval_every", "eval_batches")})
    return cfg.model_copy(update={"train": train})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", nargs="?", default="docs/llama-budgets.json")
    parser.add_argument("--out", default="tasks/plan/law.json")
    args = parser.parse_args()
    law = make_law(json.loads(Path(args.summary).read_text()))
    Path(args.out).write_text(json.dumps(law, indent=None, separators=(",", ":"), default=float) + "\n")
    for p in law["points"]:
        figs = {n: a["flops_ratio"] for n, a in p["arms"].items()}
        print(
            p["size"],
            p["tokens_per_param"],
            p["ranking"][0],
            {n: None if v is None else round(v, 3) for n, v in figs.items()},
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
