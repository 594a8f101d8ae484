"""docs/llama-budgets.json (or docs/byte-budgets.json), its figure and markdown tables from the raw runs of
bench/equal/budgets.py.

    python -m bench.equal.report /tmp/bench-e/llama-budgets-raw.json --out docs/llama-budgets.json
    python -m bench.equal.report /tmp/bench-byte/byte-budgets-raw.json --out docs/byte-budgets.json

The law's held-out point, the goals and the curves drawn come with the raw runs (``Setup.report``); without
them (older raw files), the llama setup's: the large size at 20 tokens/param, the goals there, ``s``/20's curves.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from bench.equal.law import compute_fit, from_scratch, headline, law, multiplier

LLAMA_REPORT = {
    "held_out": ["l", 20.0],
    "goals": [[20.0, "best staged schedule", 0.50], [20.0, "late-jump-mup", 0.35]],
    "curves": ["s", 20.0],
}


def summarise(raw: dict) -> dict:
    runs = [r for r in raw["runs"] if r.get("points")]
    report = raw.get("report") or LLAMA_REPORT
    held = tuple(report["held_out"])
    head = headline(runs)
    fit = compute_fit(runs)
    budgets = []
    for h in head.values():
        for a in h["arms"].values():
            m = multiplier(fit, h["flops_budget"], a["final_test_loss"]) if a["final_test_loss"] else None
            a["effective_compute_multiplier"] = m
        h["best_schedule"], h["best_chosen_by"] = choose(h["arms"], raw["tuning"]["arms"])
        budgets.append(h)
    budgets.sort(key=lambda b: (b["size"], b["tokens_per_param"]))
    points = {}
    for which in ("best", "late-jump-mup"):
        pts = []
        for b in budgets:
            name = b["best_schedule"] if which == "best" else which
            if name not in b["arms"]:
                continue
            m = b["arms"][name]["effective_compute_multiplier"]
            base = b["arms"]["scratch"]["effective_compute_multiplier"]
            m = m / base if m and base else None  # over the target's own scratch run: the saving a user gets
            if m:
                pts.append(
                    {
                        "size": b["size"],
                        "tokens_per_param": b["tokens_per_param"],
                        "params": b["params"],
                        "y": math.log(m),
                        "schedule": name,
                    }
                )
        idx = next((i for i, p in enumerate(pts) if (p["size"], p["tokens_per_param"]) == held), None)
        points[which] = {"held_out_fit": _law(pts, idx), "full_fit": _law(pts), "points": pts}
    return {
        "preset": raw["preset"],
        "command": raw.get("command")
        or COMMANDS.get(raw["preset"], "python -m bench.equal.budgets && python -m bench.equal.report ..."),
        "bench_seconds": raw["bench_seconds"],
        "estimated_seconds": raw["estimated_seconds"],
        "sizes": raw["sizes"],
        "tuning": raw["tuning"],
        "test_split": raw["test_split"],
        "compute_fit": fit,
        "budgets": budgets,
        "law": points,
        "report": report,
        "goals": goals(budgets, report["goals"]),
    } | {k: raw[k] for k in ("sittings", "right_sizing", "ratio_resolution", "machine", "partial") if k in raw}


COMMANDS = {
    "llama-budgets": "python -m bench.equal.budgets --workdir /tmp/bench-e && python -m bench.equal.report ...",
    "byte-budgets": "python -m bench.equal.budgets --model gpt --workdir /tmp/bench-byte && "
    "python -m bench.equal.report /tmp/bench-byte/byte-budgets-raw.json --out docs/byte-budgets.json",
}


def choose(arms: dict, tuned: dict) -> tuple[str, str]:
    """The best staged arm, chosen on validation data only: the lowest mean final loss of the held-out runs on the
    validation half; where a run lacks it (raw runs from before issue 28), the arm's tuning objective (its best
    trial's mean final validation loss on the tuning seeds). Never on the test split the headline reads."""
    staged = [n for n in arms if not from_scratch(n)]
    if all(arms[n].get("final_val_loss") is not None for n in staged):
        return min(staged, key=lambda n: arms[n]["final_val_loss"]), "held-out runs' final loss on the validation half"
    return min(staged, key=lambda n: tuned[n]["best_value"]), "tuning objective (validation half, tuning seeds)"


def _law(pts: list[dict], held_out: int | None = None) -> dict | None:
    """The law, or None where fewer than two points are left to fit its intercept and slope on."""
    return law(pts, held_out) if len(pts) - (held_out is not None) >= 2 else None


def goals(budgets: list[dict], wanted: list) -> list[dict]:
    """Each goal [tokens/param, what, at most, (optional) its 95% upper bound below]: met or missed, by how much."""
    out = []
    for tpp, what, goal, *upper in wanted:
        for b in (b for b in budgets if b["tokens_per_param"] == tpp):
            name = b["best_schedule"] if what.startswith("best") else what
            a = b["arms"][name]
            r, ci = a["flops_ratio"], a.get("flops_ratio_ci95")
            verdict = (
                "met"
                if r is not None and r <= goal
                else ("not reached within the budget (missed)" if r is None else f"missed by {r - goal:.3f}")
            )
            if upper and r is not None:
                hi = ci[1] if ci else None
                verdict += (
                    f"; upper bound {hi:.3f} " + ("< " if hi < upper[0] else ">= ") + f"{upper[0]:g}"
                    if hi is not None
                    else "; no interval (one seed): upper-bound goal not assessed"
                )
            out.append(
                {
                    "size": b["size"],
                    "tokens_per_param": tpp,
                    "figure": f"{what} ({name}) FLOPs to scratch's test loss / scratch's",
                    "measured": r,
                    "ci95": ci,
                    "goal": goal,
                    "upper_goal": upper[0] if upper else None,
                    "verdict": verdict,
                }
            )
    return out


def markdown(s: dict) -> str:
    f = lambda v, p=3: "not reached" if v is None else f"{v:.{p}f}"  # noqa: E731
    ci = lambda v, p=3: "" if not v else f" [{v[0]:.{p}f}, {v[1]:.{p}f}]"  # noqa: E731
    lines = [
        "| size | tokens/param | arm | FLOPs to scratch's test loss / scratch [95%] (seeds reached) "
        "| final test loss at equal FLOPs | - scratch's [95%] | effective-compute multiplier | growth-moment hits |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in s["budgets"]:
        for n, a in b["arms"].items():
            lines.append(
                f"| {b['size']} ({b['params']:,}) | {b['tokens_per_param']:g} | {n} "
                f"| {f(a['flops_ratio'])}{ci(a.get('flops_ratio_ci95'))} ({a['reached']}/{a['n']}) "
                f"| {f(a['final_test_loss'], 4)} | {f(a.get('delta_loss'), 4)}{ci(a.get('delta_loss_ci95'), 4)} "
                f"| {f(a['effective_compute_multiplier'], 2)} | {a.get('reached_at_growth_moment', 0)} |"
            )
    return "\n".join(lines) + "\n"


def plot(s: dict, raw: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.8), dpi=110)
    ax, cv = fig.subplots(1, 2)
    names = list(s["budgets"][0]["arms"])
    curve = tuple(s["report"]["curves"])
    sizes = list(dict.fromkeys(b["size"] for b in s["budgets"]))
    for i, n in enumerate(names):
        for size, mk in zip(sizes, ("o-", "s--", "^:")):
            bs = [b for b in s["budgets"] if b["size"] == size]
            xs = [b["tokens_per_param"] for b in bs if b["arms"][n]["effective_compute_multiplier"]]
            ys = [
                b["arms"][n]["effective_compute_multiplier"] for b in bs if b["arms"][n]["effective_compute_multiplier"]
            ]
            ax.plot(xs, ys, mk, color=f"C{i}", label=f"{n} ({size})" if size == sizes[0] else None)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens per parameter (" + ", ".join(f"{m}: {z}" for z, m in zip(sizes, ("o-", "s--", "^:"))) + ")")
    ax.set_ylabel("effective-compute multiplier (scratch fit)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    for i, n in enumerate(names):
        for r in (r for r in raw["runs"] if (r["size"], r["budget"], r["seed"], r["schedule"]) == (*curve, 1, n)):
            cv.plot(
                [p["flops"] for p in r["points"]],
                [p["val_loss"] for p in r["points"]],
                color="black" if n == "scratch" else f"C{i}",
                label=n,
            )
    cv.set_xlabel("training FLOPs")
    cv.set_ylabel("test loss (nats/token)")
    cv.set_title(f"size {curve[0]}, {curve[1]:g} tokens/param, held-out seed 1")
    cv.legend(fontsize=7)
    cv.grid(alpha=0.3)
    fig.suptitle(f"{s['preset']}: equal FLOPs per arm, test split")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw")
    parser.add_argument("--out", default="docs/llama-budgets.json")
    args = parser.parse_args()
    raw = json.loads(Path(args.raw).read_text())
    s = summarise(raw)
    out = Path(args.out)
    out.write_text(json.dumps(s, indent=1, default=float) + "\n")
    plot(s, raw, out.with_suffix(".png"))
    print(markdown(s))
    print(json.dumps({"law": s["law"], "goals": s["goals"], "compute_fit": s["compute_fit"]}, indent=1, default=float))


if __name__ == "__main__":
    main()
