"""The equal-compute figures from held-out runs, the loss-vs-compute fit, and the savings law.

    headline(runs)         per (size, budget, arm): FLOPs to reach scratch's final test loss / scratch's FLOPs
                           ("not reached" when the curve never gets there within the budget; the growth moment
                           never counts), final test loss, paired bootstrap 95% intervals over the seeds
    compute_fit(runs)      L(C) = E + A C^-alpha through the from-scratch runs' final test losses (Pareto front)
    multiplier(fit, C, l)  the effective-compute multiplier: the scratch compute reaching loss l, over C
    law(points, held_out)  log multiplier = a + b log(tokens/param) + c log(params), fitted without one point,
                           which it then predicts

Pure functions on JSON-like dicts: the tests feed them hand-made curves.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
from scipy.optimize import curve_fit

from bench.suite.curves import Point, paired_bootstrap, to_target
from bench.suite.figures import final_stage, growth_moment

FROM_SCRATCH = "scratch"


def _points(run: dict) -> list[Point]:
    return final_stage([Point(**p) for p in run["points"]]) if run.get("points") else []


def from_scratch(name: str) -> bool:
    """scratch, the smaller baselines, and issue 28's over-deep reference target ("scratch-deep")."""
    return name in (FROM_SCRATCH, "scratch-deep") or name.startswith("small-")


def headline(runs: list[dict]) -> dict:
    """{'size/tpp': {arm: {per-seed rows, mean ratio (None if a seed never reached), paired bootstrap intervals}}}.

    Per seed, the target is that seed's scratch final test loss; an arm's FLOPs to it are read from its final
    stage's trained evals only (bench.suite.figures.final_stage): the growth-moment eval is the small model's
    loss, reported beside it (``growth_moment_loss``, ``reached_at_growth_moment``), never as the arm's."""
    out: dict[str, dict] = {}
    for key in dict.fromkeys((r["size"], r["budget"]) for r in runs):
        here = [r for r in runs if (r["size"], r["budget"]) == key]
        scratch = {r["seed"]: r for r in here if r["schedule"] == FROM_SCRATCH}
        arms: dict[str, dict] = {}
        for name in dict.fromkeys(r["schedule"] for r in here):
            rows = [_row(scratch[r["seed"]], r) for r in here if r["schedule"] == name]
            finals = [x["final_test_loss"] for x in rows if x["final_test_loss"] is not None]
            vals = [x["final_val_loss"] for x in rows if x["final_val_loss"] is not None]
            ratio = paired_bootstrap([x["flops_ratio"] for x in rows])
            delta = paired_bootstrap([x["delta_loss"] for x in rows])
            arms[name] = {
                "rows": rows,
                "flops_ratio": ratio["mean"],
                "flops_ratio_ci95": ratio["ci95"],
                "reached": ratio["reached"],
                "n": len(rows),
                "final_test_loss": statistics.fmean(finals) if finals else None,
                "delta_loss": delta["mean"],  # the arm's final test loss - scratch's, same seed; < 0: lower
                "delta_loss_ci95": delta["ci95"],
                "final_val_loss": statistics.fmean(vals) if len(vals) == len(rows) else None,  # choice of the best
                "reached_at_growth_moment": sum(bool(x["reached_at_growth_moment"]) for x in rows),
            }
        first = here[0]
        out[f"{key[0]}/{key[1]:g}"] = {
            "size": key[0],
            "tokens_per_param": key[1],
            "params": first["params"],
            "flops_budget": first["flops_budget"],
            "arms": arms,
        }
    return out


def _row(base: dict, r: dict) -> dict:
    """One held-out seed of one arm against that seed's scratch run."""
    target = base["final_val_loss"]
    f_base = to_target(_points(base), target, "flops")
    f_arm = to_target(_points(r), target, "flops") if r.get("points") else None
    grown = growth_moment([Point(**p) for p in r["points"]]) if r.get("points") else None
    final = r["final_val_loss"]
    return {
        "seed": r["seed"],
        "target_test_loss": target,
        "flops_ratio": None if f_arm is None or not f_base else f_arm / f_base,
        "final_test_loss": final,
        "delta_loss": None if final is None else final - target,
        "final_val_loss": r.get("final_val_split_loss"),  # the validation half (tuning's data), for the choice
        "growth_moment_loss": grown.val_loss if grown else None,
        "reached_at_growth_moment": bool(grown and grown.val_loss <= target),  # the small model already reached it
        "flops": r.get("flops"),
        "tokens": r.get("tokens"),
    }


def _curve(c, e, a, alpha):
    return e + a * np.power(c / 1e9, -alpha)


def compute_fit(runs: list[dict]) -> dict:
    """Loss vs compute from the from-scratch runs (scratch and the small baselines, every size and budget):
    the Pareto front of (FLOPs, mean final test loss), fitted with E + A (C / 1e9)^-alpha."""
    pts: dict[tuple, list[float]] = {}
    for r in runs:
        if from_scratch(r["schedule"]) and r.get("final_val_loss") is not None:
            pts.setdefault((r["size"], r["budget"], r["schedule"]), []).append((r["flops_budget"], r["final_val_loss"]))
    mean = sorted((v[0][0], statistics.fmean(x for _, x in v)) for v in pts.values())
    front, best = [], math.inf
    for c, loss in mean:
        if loss < best:
            front.append((c, loss))
            best = loss
    cs, ls = np.array([c for c, _ in front]), np.array([x for _, x in front])
    p0 = [max(0.0, ls.min() - 0.5), 1.0, 0.3]
    if len(front) >= 3:
        (e, a, alpha), _ = curve_fit(_curve, cs, ls, p0=p0, bounds=([0, 0, 0.01], [ls.min(), 100, 3]), maxfev=20000)
    else:  # too few points for three parameters: a pure power law through them
        e, (alpha, a) = (
            0.0,
            (
                -np.polyfit(np.log(cs / 1e9), np.log(ls), 1)[0],
                float(np.exp(np.polyfit(np.log(cs / 1e9), np.log(ls), 1)[1])),
            ),
        )
    return {
        "E": float(e),
        "A": float(a),
        "alpha": float(alpha),
        "front": front,
        "range": [float(cs.min()), float(cs.max())],
    }


def multiplier(fit: dict, flops: float, loss: float) -> float | None:
    """C_eff / C: the compute at which the from-scratch fit reaches ``loss``, over ``flops``; None below E."""
    if loss <= fit["E"]:
        return None
    c_eff = 1e9 * ((loss - fit["E"]) / fit["A"]) ** (-1 / fit["alpha"])
    return c_eff / flops


def law(points: list[dict], held_out: int | None = None) -> dict:
    """Least squares of y = a + b log(tpp) + c log(params) (each point: tokens_per_param, params, y),
    without ``points[held_out]``; with the prediction and error at the held-out point. With fewer points than
    three plus one the size term is dropped."""
    fit_on = [p for i, p in enumerate(points) if i != held_out]
    use_size = len({p["params"] for p in fit_on}) > 1 and len(fit_on) >= 4
    X = np.array(
        [[1.0, math.log(p["tokens_per_param"])] + ([math.log(p["params"])] if use_size else []) for p in fit_on]
    )
    y = np.array([p["y"] for p in fit_on])
    coef, res, *_ = np.linalg.lstsq(X, y, rcond=None)
    dof = len(y) - X.shape[1]
    resid = y - X @ coef
    sigma = float(np.sqrt((resid**2).sum() / dof)) if dof > 0 else None
    out = {
        "coef": [float(c) for c in coef],
        "terms": ["1", "log tpp"] + (["log params"] if use_size else []),
        "sigma": sigma,
        "fitted_on": [{k: p[k] for k in ("tokens_per_param", "params")} for p in fit_on],
        "tpp_range": [min(p["tokens_per_param"] for p in fit_on), max(p["tokens_per_param"] for p in fit_on)],
        "params_range": [min(p["params"] for p in fit_on), max(p["params"] for p in fit_on)],
    }
    if held_out is not None:
        p = points[held_out]
        pred = predict(out, p["tokens_per_param"], p["params"])
        out["held_out"] = {**p, "predicted": pred, "error": pred - p["y"]}
    return out


def predict(fit: dict, tokens_per_param: float, params: float) -> float:
    x = [1.0, math.log(tokens_per_param)] + ([math.log(params)] if len(fit["coef"]) == 3 else [])
    return float(np.dot(fit["coef"], x))
