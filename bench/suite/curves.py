"""Pure functions on measured curves: when a curve first reaches a target, and the mean and 95% interval
over seeds.

Kept free of torch and I/O so the figures the benchmark reports can be checked on hand-made curves.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import t as t_dist


@dataclass(frozen=True)
class Point:
    """One validation eval. ``seconds`` is training wall time so far, eval time excluded."""

    stage: int
    step: int  # global step over all stages
    seconds: float
    tokens: int
    flops: float
    val_loss: float

    def as_dict(self) -> dict:
        return asdict(self)


def time_to_target(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """The first x at which the loss reaches ``target``, linearly interpolated between the last
    eval above it and the first at or below it; None if the curve never gets there.

    ``curve`` is (x, loss) in increasing x (x = seconds, tokens or FLOPs)."""
    prev: tuple[float, float] | None = None
    for x, loss in curve:
        if loss <= target:
            if prev is None or prev[1] == loss:
                return float(x)
            x0, l0 = prev
            return x0 + (x - x0) * (l0 - target) / (l0 - loss)
        prev = (x, loss)
    return None


def to_target(points: Sequence[Point], target: float, axis: str) -> float | None:
    return time_to_target([(getattr(p, axis), p.val_loss) for p in points], target)


def ratio(staged: float | None, scratch: float | None) -> float | None:
    """staged / scratch; None when the staged arm never reached the target."""
    if staged is None or not scratch:
        return None
    return staged / scratch


def interval(values: Sequence[float | None]) -> dict:
    """Mean, sample std, min, max and the 95% Student-t interval of the mean over seeds. A seed that never
    reached the target makes the mean and interval None (reported as 'not reached', never silently dropped);
    one seed has no interval."""
    reached = [v for v in values if v is not None and math.isfinite(v)]
    out: dict = {"n": len(values), "reached": len(reached), "min": min(reached, default=None)}
    out["max"] = max(reached, default=None)
    if not reached or len(reached) < len(values):
        return {**out, "mean": None, "std": None, "ci95": None}
    n, mean = len(reached), statistics.fmean(reached)
    std = statistics.stdev(reached) if n > 1 else 0.0
    half = float(t_dist.ppf(0.975, n - 1)) * std / math.sqrt(n) if n > 1 else None
    return {**out, "mean": mean, "std": std, "ci95": None if half is None else [mean - half, mean + half]}


def paired_bootstrap(values: Sequence[float | None], resamples: int = 10_000, seed: int = 0) -> dict:
    """Mean and percentile-bootstrap 95% interval of the mean of per-seed *paired* values (each an arm's figure
    over the same seed's scratch: a FLOPs ratio, or a loss difference): the seeds are resampled with
    replacement, the pairs kept whole. A seed with no value (never reached) makes mean and interval None; one
    seed has no interval. Seeded: the same values give the same interval."""
    reached = [v for v in values if v is not None and math.isfinite(v)]
    out: dict = {"n": len(values), "reached": len(reached)}
    if not reached or len(reached) < len(values):
        return {**out, "mean": None, "ci95": None}
    x = np.asarray(reached, dtype=float)
    if len(x) < 2:
        return {**out, "mean": float(x.mean()), "ci95": None}
    means = x[np.random.default_rng(seed).integers(0, len(x), (resamples, len(x)))].mean(axis=1)
    return {
        **out,
        "mean": float(x.mean()),
        "ci95": [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))],
    }
