"""`staged plan`: what a staged schedule saves for a target model at a token budget, measured, never overstated.

The law ships with the package (``law.json`` beside this module, written by bench/equal/planlaw.py from the
equal-compute benchmark): its measured points (size, tokens/param, parameters) and per arm at each point the
FLOPs to reach scratch's final test loss over scratch's and the final test loss against scratch's, each with a
paired bootstrap 95% interval over the held-out seeds and the bootstrap means it was read from.

    plan(law, params, tokens)   -> Plan: refuses outside the hull of the measured points; at a measured point
                                   the measured figures themselves; between points each arm's figures
                                   interpolated linearly (in log tokens/param, log parameters) over its own
                                   measured points, intervals alike. It recommends the first staged arm of the
                                   validation ranking whose own figure is a saving (none if no arm saves), and
                                   names a smaller from-scratch model that reaches a lower loss at that budget.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources

import numpy as np
from scipy.spatial import Delaunay

from models.errors import UserError

MATCH = 0.02  # a query within 2% (in log) of a measured point's tokens/param and parameters is that point


class OutOfRange(UserError, ValueError):
    """A plan the law cannot make: outside the hull of the measured points. One line."""


def load_law() -> dict:
    """The law shipped with the package (read as package data: works from an installed wheel)."""
    return json.loads(resources.files("tasks.plan").joinpath("law.json").read_text())


def _xy(tpp: float, params: float) -> np.ndarray:
    return np.array([math.log(tpp), math.log(params)])


def weights(points: list[tuple[float, float]], tpp: float, params: float) -> np.ndarray | None:
    """Barycentric weights of (tpp, params) over the measured (tpp, params) points, in log space: non-zero on the
    corners of the triangle (segment, when one size was measured; point, when one budget) that holds it; None
    outside their convex hull. A figure interpolated with them passes through every measured point and never
    extrapolates."""
    pts, q = np.array([_xy(*p) for p in points]), _xy(tpp, params)
    w, rel = np.zeros(len(pts)), pts - pts[0]
    rank = np.linalg.matrix_rank(rel, tol=1e-9) if len(pts) > 1 else 0
    if rank == 2:
        tri = Delaunay(pts)
        s = int(tri.find_simplex(q, tol=1e-9))
        if s < 0:
            return None
        t = tri.transform[s]
        b = t[:2] @ (q - t[2])
        w[tri.simplices[s]] = [*b, 1 - b.sum()]
        return w
    if rank == 0:
        w[0] = 1.0
        return w if np.abs(q - pts[0]).max() <= MATCH else None
    d = rel[np.argmax(np.linalg.norm(rel, axis=1))]  # the points lie on one line: where along it, between which two
    ts, t = rel @ d / (d @ d), float((q - pts[0]) @ d / (d @ d))
    if np.abs(q - pts[0] - t * d).max() > MATCH or not ts.min() - 1e-9 <= t <= ts.max() + 1e-9:
        return None
    lo = max((i for i in range(len(ts)) if ts[i] <= t + 1e-9), key=lambda i: ts[i])
    hi = min((i for i in range(len(ts)) if ts[i] >= t - 1e-9), key=lambda i: ts[i])
    f = 0.0 if ts[hi] == ts[lo] else (t - ts[lo]) / (ts[hi] - ts[lo])
    w[lo] += 1 - f
    w[hi] += f
    return w


def interpolated(points: list[dict], name: str, key: str, tpp: float, params: float) -> dict | None:
    """Arm ``name``'s figure ``key`` at (tpp, params), interpolated over the measured points where it has one (a
    FLOPs ratio in log), with the 2.5-97.5% range of its seed-bootstrap means interpolated alike; None outside
    their hull."""
    have = [p for p in points if p["arms"][name][key] is not None]
    w = weights([(p["tokens_per_param"], p["params"]) for p in have], tpp, params) if have else None
    if w is None:
        return None
    f, inv = (np.log, np.exp) if key == "flops_ratio" else (np.asarray, np.asarray)
    on = [(p, wi) for p, wi in zip(have, w) if wi > 1e-9]
    used, w = [p for p, _ in on], np.array([wi for _, wi in on])
    y = float(inv(w @ f(np.array([p["arms"][name][key] for p in used]))))
    if any(p["arms"][name][key + "_boot"] is None for p in used):  # a point of one seed: no interval
        return {"mean": y, "ci95": None, "points": used}
    boot = inv(w @ f(np.array([p["arms"][name][key + "_boot"] for p in used])))
    return {"mean": y, "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))], "points": used}


@dataclass(frozen=True)
class Figure:
    """One arm's figures at the query: measured (at a measured point) or interpolated between its points."""

    arm: str
    flops_ratio: dict | None  # {"mean", "ci95"}; None: not reached on every seed, or no figure here
    delta_loss: dict | None  # the arm's final test loss - scratch's at equal FLOPs (< 0: lower)

    @property
    def saves(self) -> bool:
        return self.flops_ratio is not None and self.flops_ratio["mean"] < 1.0


@dataclass(frozen=True)
class Plan:
    params: int
    tokens: int
    tokens_per_param: float
    measured: dict | None  # the measured point the query is, or None (between points)
    rests_on: list[str]  # the measured points the figures come from
    recommended: Figure | None
    passed_over: list[str]  # staged arms ranked above it on validation whose own figure is no saving here
    smaller: Figure | None  # a smaller from-scratch model with a lower loss than the target's at this budget
    source: str
    closest: dict  # the measured point nearest the query: `staged plan --out` trains as it was tuned there

    def lines(self) -> list[str]:
        m = self.measured
        where = f"the measured point {_name(m)}" if m else "between measured points: figures interpolated over them"
        out = [
            f"target: {self.params:,} parameters, {self.tokens:,} tokens = {self.tokens_per_param:.1f} tokens/param "
            f"({where})",
            f"rests on: {', '.join(self.rests_on)}; {self.source}",
        ]
        r = self.recommended
        if r is None:
            out.append("schedule: none: no staged arm's own figure is a saving here; train the target from scratch")
        else:
            mean, ci = r.flops_ratio["mean"], r.flops_ratio["ci95"]
            band = (
                f" [95% {1 - ci[1]:.0%} to {1 - ci[0]:.0%}]"
                if ci
                else " (no interval: a point it rests on has one seed)"
            )
            out.append(
                f"schedule: {r.arm} saves {1 - mean:.0%}{band} of scratch's FLOPs to reach scratch's final test loss "
                f"(FLOPs ratio {mean:.3f}, equal loss, on the target's own curve)"
            )
        if self.passed_over:
            out.append(
                f"passed over (ranked higher on validation, no saving of their own here): {', '.join(self.passed_over)}"
            )
        if (s := self.smaller) is not None:
            d = s.delta_loss
            band = f" [95% {d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d["ci95"] else ""
            also = f", lower than {r.arm}'s too" if r and r.delta_loss and d["mean"] < r.delta_loss["mean"] else ""
            out.append(
                f"a smaller model is better at this budget: {s.arm} from scratch reaches a lower test loss than the "
                f"target on the same FLOPs ({d['mean']:+.3f} nats{band}{also})"
            )
        return out


def _name(p: dict) -> str:
    return f"{p['size']}/{p['tokens_per_param']:g}"


def _measured(point: dict, name: str) -> Figure:
    a = point["arms"][name]
    ratio = None if a["flops_ratio"] is None else {"mean": a["flops_ratio"], "ci95": a["flops_ratio_ci95"]}
    delta = None if a["delta_loss"] is None else {"mean": a["delta_loss"], "ci95": a["delta_loss_ci95"]}
    return Figure(name, ratio, delta)


def plan(law: dict, params: int, tokens: int) -> Plan:
    """The plan for a ``params``-parameter target trained on ``tokens`` tokens (see the module docstring)."""
    tpp, points = tokens / params, law["points"]
    if weights([(p["tokens_per_param"], p["params"]) for p in points], tpp, params) is None:
        span = ", ".join(f"{_name(p)} = {p['params']:,} at {p['tokens_per_param']:g}" for p in points)
        raise OutOfRange(f"{params:,} parameters at {tpp:.1f} tokens/param is outside the measured points ({span})")
    near = lambda p: max(abs(math.log(p["tokens_per_param"] / tpp)), abs(math.log(p["params"] / params)))  # noqa: E731
    closest = min(points, key=near)
    measured = closest if near(closest) <= MATCH else None

    def figure(name: str) -> Figure:
        if measured:
            return _measured(measured, name)
        at = lambda key: interpolated(points, name, key, tpp, params)  # noqa: E731
        return Figure(name, at("flops_ratio"), at("delta_loss"))

    ranked = [figure(n) for n in closest["ranking"]]
    recommended = next((f for f in ranked if f.saves), None)
    passed = [f.arm for f in ranked[: ranked.index(recommended) if recommended else len(ranked)]]
    wins = [f for f in map(figure, closest["arms"]) if f.arm.startswith("small-") and f.delta_loss]
    wins = [f for f in wins if f.delta_loss["mean"] < 0]
    smaller = min(wins, key=lambda f: f.delta_loss["mean"]) if wins else None
    if measured:
        rests_on = [f"{_name(measured)} ({measured['seeds']} held-out seed{'s' * (measured['seeds'] > 1)})"]
    else:
        used = [x for f in (recommended, smaller) if f for x in (f.flops_ratio, f.delta_loss) if x]
        rests_on = sorted({_name(p) for x in used for p in x["points"]}) or [_name(p) for p in points]
    return Plan(params, tokens, tpp, measured, rests_on, recommended, passed, smaller, law["source"], closest)
