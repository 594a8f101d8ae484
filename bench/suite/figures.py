"""The benchmark's figures from raw arm curves: pure functions, so tests can feed them hand-made curves.

Per held-out seed the target is that seed's scratch final validation loss; a schedule's FLOPs (and wall
time) to target is where its *final* stage's curve first reaches it (bench.suite.curves.time_to_target), over
scratch's own. The headline per schedule and budget: the mean FLOPs ratio over the held-out seeds with
its 95% interval, the wall-time ratio beside it, and a verdict that says plainly when a schedule loses.
"""

from __future__ import annotations

from bench.suite.curves import Point, interval, ratio, to_target


def final_stage(points: list[Point]) -> list[Point]:
    """Only the last stage's *trained* evals count: the target must be reached by the final architecture after
    at least one step of its own. On a short budget a 6-layer stage can reach an undertrained 12-layer scratch
    loss on its own; that is a finding about the budget, not a staged-training speed-up. And the eval at the
    growth moment (step 0 of the last stage) is the small model's loss: identity growth preserves the function,
    so counting it would report the small stage's share of FLOPs as the grown model's (see growth_moment)."""
    last = max(p.stage for p in points)
    stage = [p for p in points if p.stage == last]
    return [p for p in stage if p.step > stage[0].step]


def growth_moment(points: list[Point]) -> Point | None:
    """The eval at the start of the last stage of a staged arm: the grown model before its first step (None for a
    one-stage arm). Reported beside the headline, never in it: "the small model already reached it"."""
    last = max(p.stage for p in points)
    return next((p for p in points if p.stage == last), None) if last > 1 else None


def seed_row(scratch: dict, arm: dict) -> dict:
    """One held-out seed of one schedule against that seed's scratch arm (both as ArmResult.as_dict())."""
    target = scratch["final_val_loss"]
    sp, every = [Point(**p) for p in scratch["points"]], [Point(**p) for p in arm["points"]]
    n_stages = len(arm.get("boundaries") or [None])
    ap = final_stage(every) if every and max(p.stage for p in every) == n_stages else []  # [] : a failed run
    grown = growth_moment(every) if ap else None
    ts, fs = to_target(sp, target, "seconds"), to_target(sp, target, "flops")
    ta, fa = to_target(ap, target, "seconds"), to_target(ap, target, "flops")
    return {
        "seed": arm["seed"],
        "target": target,
        "scratch_seconds": ts,
        "staged_seconds": ta,
        "scratch_flops": fs,
        "staged_flops": fa,
        "time_ratio": ratio(ta, ts),
        "flops_ratio": ratio(fa, fs),
        "staged_final_val_loss": arm["final_val_loss"],
        "reached_before_final_stage": any(p.val_loss <= target for p in every if p.stage < n_stages),
        "growth_moment_loss": grown.val_loss if grown else None,  # "the small model already reached it"
    }


def with_seeds(rows: list[dict], key: str) -> dict:
    """The interval of ``key`` over the rows, with each seed's value."""
    return {**interval([r[key] for r in rows]), "per_seed": {str(r["seed"]): r[key] for r in rows}}


def verdict(flops: dict) -> str:
    if flops["mean"] is None:
        return f"loses: target not reached on {flops['n'] - flops['reached']} of {flops['n']} held-out seeds"
    if flops["mean"] >= 1.0:
        return "loses: needs at least scratch's FLOPs"
    hi = flops["ci95"][1] if flops["ci95"] else flops["max"]
    return "saves" if hi < 1.0 else "saves on average; the interval reaches 1"


def schedule_figures(rows: list[dict]) -> dict:
    flops = with_seeds(rows, "flops_ratio")
    return {"flops_ratio": flops, "time_ratio": with_seeds(rows, "time_ratio"), "verdict": verdict(flops)}


def scratch_rows(arms: list[dict]) -> list[dict]:
    return [
        {"seed": a["seed"], "final_val_loss": a["final_val_loss"], "seconds": a["train_seconds"], "flops": a["flops"]}
        for a in arms
    ]


def summarise(arms: list[dict]) -> dict[str, dict]:
    """Per schedule: figures over the held-out seeds and the per-seed rows. ``arms``: one budget's held-out
    arms (ArmResult.as_dict()), a scratch arm per seed and each schedule's arm on the same seeds."""
    scratch = {a["seed"]: a for a in arms if a["schedule"] == "scratch"}
    out: dict[str, dict] = {}
    for name in dict.fromkeys(a["schedule"] for a in arms if a["schedule"] != "scratch"):
        rows = [seed_row(scratch[a["seed"]], a) for a in arms if a["schedule"] == name]
        out[name] = {**schedule_figures(rows), "rows": rows}
    return out


def best_schedule(schedules: dict[str, dict]) -> str | None:
    """The lowest mean FLOPs ratio among schedules that reached the target on every held-out seed."""
    reached = {n: s["flops_ratio"]["mean"] for n, s in schedules.items() if s["flops_ratio"]["mean"] is not None}
    return min(reached, key=reached.get) if reached else None
