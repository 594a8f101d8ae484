"""The equal-compute figures from held-out runs, the loss-vs-compute fit, and the savings law.

    headline(runs)         per (size, budget, arm): FLOPs to reach scratch's final test loss / scratch's FLOPs
                           ("not reached" when the curve never gets there within the budget), final test loss
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

from bench.suite.curves import Point, to_target
from bench.suite.figures import final_stage

FROM_SCRATCH = "scratch"


def _points(run: dict) -> list[Point]:
    return final_stage([Point(**p) for p in run["points"]]) if run.get("points") else []


def from_scratch(name: str) -> bool:
    return name == FROM_SCRATCH or name.startswith("small-")


def headline(runs: list[dict]) -> dict:
    """{(size, tpp): {arm: {per_seed rows, mean ratio or None, final losses}}} keyed as 'size/tpp'."""
    out: dict[str, dict] = {}
    for key in dict.fromkeys((r["size"], r["budget"]) for r in runs):
        here = [r for r in runs if (r["size"], r["budget"]) == key]
        scratch = {r["seed"]: r for r in here if r["schedule"] == FROM_SCRATCH}
        arms: dict[str, dict] = {}
        for name in dict.fromkeys(r["schedule"] for r in here):
            rows = []
            for r in (r for r in here if r["schedule"] == name):
                base = scratch[r["seed"]]
                target = base["final_val_loss"]
                f_base = to_target(_points(base), target, "flops")
                f_arm = to_target(_points(r), target, "flops") if r.get("points") else None
                rows.append(
                    {
                        "seed": r["seed"],
                        "target_test_loss": target,
                        "flops_ratio": None if f_arm is None or not f_base else f_arm / f_base,
                        "final_test_loss": r["final_val_loss"],
                        "flops": r.get("flops"),
                        "tokens": r.get("tokens"),
                    }
                )
            ratios = [x["flops_ratio"] for x in rows]
            finals = [x["final_test_loss"] for x in rows if x["final_test_loss"] is not None]
            arms[name] = {
                "rows": rows,
                "flops_ratio": statistics.fmean(ratios) if None not in ratios else None,
                "reached": sum(x is not None for x in ratios),
                "n": len(rows),
                "final_test_loss": statistics.fmean(finals) if finals else None,
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
