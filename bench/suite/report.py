"""Turn benchmark results into what a person looks at: one markdown table (budget x schedule -> FLOPs
ratio with its interval, wall-time ratio, trials), per-seed rows, the efficiency figures against their
goals, a two-panel PNG (the saving against the budget; loss against FLOPs at the longest budget), and
all of it as Prefect and MLflow artifacts."""

from __future__ import annotations

import json
from pathlib import Path


def goals(summary: dict) -> list[tuple[str, float | None, str, float]]:
    """(figure, measured, op, goal) for the issue's goals; FLOPs goals at the shortest and longest budget."""
    rows = []
    budgets = sorted(summary["budgets"], key=lambda b: b["tokens_per_param"])
    for b, goal in ((budgets[0], 0.35), (budgets[-1], 0.50)) if len(budgets) > 1 else ((budgets[0], 0.35),):
        best = b["best_schedule"]
        value = b["schedules"][best]["flops_ratio"]["mean"] if best else None
        rows.append(
            (f"FLOPs ratio, best schedule ({best}) at {b['tokens_per_param']:g} tokens/param", value, "<=", goal)
        )
    rows.append(("throughput, train() / independent bare loop", summary["throughput_ratio_vs_bare_loop"], ">=", 0.95))
    orch_goal = {"quick": 0.10}.get(summary["preset"], 0.03)
    rows.append(("orchestration overhead fraction", summary["orchestration_overhead_fraction"], "<=", orch_goal))
    return rows


def _num(v: float | None, p: int = 3) -> str:
    return "—" if v is None else f"{v:.{p}f}"


def fmt(f: dict) -> str:
    """``mean [lo, hi]``, or how many seeds reached the target."""
    if f["mean"] is None:
        got = f"not reached on {f['n'] - f['reached']}/{f['n']} seeds"
        return got if f["min"] is None else f"{got} (others {f['min']:.3f}–{f['max']:.3f})"
    ci = f"[{f['ci95'][0]:.3f}, {f['ci95'][1]:.3f}]" if f["ci95"] else "(1 seed)"
    return f"{f['mean']:.3f} {ci}"


def headline(summary: dict) -> list[str]:
    lines = [
        "| budget (tokens/param) | schedule | FLOPs to target / scratch: held-out mean [95% CI] "
        "| wall time / scratch | trials per arm | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for b in summary["budgets"]:
        for name, s in b["schedules"].items():
            lines.append(
                f"| {b['tokens_per_param']:g} | {name} | {fmt(s['flops_ratio'])} | {fmt(s['time_ratio'])} "
                f"| {s['trials']} (scratch {b['scratch']['trials']}) | {s['verdict']} |"
            )
    return lines


def markdown(summary: dict) -> str:
    lines = [
        f"## staged bench — preset `{summary['preset']}`: tuning seeds {summary['tuning_seeds']}, "
        f"held-out seeds {summary['heldout_seeds']}, {summary['trials_per_arm']} trials per arm",
        "",
        *headline(summary),
        "",
        "Tuned hyperparameters (best trial on the tuning seeds) and the held-out scratch runs:",
        "",
        "| budget | arm | lr | warmup | shape | decay | held-out final val loss (scratch) |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in summary["budgets"]:
        finals = ", ".join(f"{r['final_val_loss']:.4f}" for r in b["scratch"]["per_seed"])
        for name, arm in [("scratch", b["scratch"]), *b["schedules"].items()]:
            p = arm["best_params"]
            lines.append(
                f"| {b['tokens_per_param']:g} | {name} | {p['lr']:.2e} | {p['warmup']:.2f} | {p['shape']} "
                f"| {p['decay']:.2f} | {finals if name == 'scratch' else ''} |"
            )
    lines += [
        "",
        "Per held-out seed (target = that seed's scratch final val loss; only the final stage's evals count):",
        "",
        "| budget | schedule | seed | target | FLOPs ratio | time ratio | staged s to target | scratch s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in summary["budgets"]:
        for name, s in b["schedules"].items():
            for r in s["rows"]:
                lines.append(
                    f"| {b['tokens_per_param']:g} | {name} | {r['seed']} | {r['target']:.4f} "
                    f"| {_num(r['flops_ratio'])} | {_num(r['time_ratio'])} "
                    f"| {_num(r['staged_seconds'], 1)} | {_num(r['scratch_seconds'], 1)} |"
                )
    lines += ["", "| goal | measured | verdict |", "|---|---|---|"]
    for what, value, op, goal in goals(summary):
        ok = value is not None and (value <= goal if op == "<=" else value >= goal)
        verdict = "not measured" if value is None else f"{'met' if ok else 'NOT met'} (goal {op} {goal})"
        lines.append(f"| {what} | {_num(value)} | {verdict} |")
    eff = summary["efficiency"]
    lines += [
        "",
        f"Throughput: train() {eff['train_tokens_per_s']:.0f} tokens/s, bare loop {eff['bare_tokens_per_s']:.0f} "
        f"tokens/s; ratio per round {', '.join(f'{r:.3f}' for r in eff['ratio_per_round'])}: {eff['note']}. "
        f"MFU {eff['mfu']:.3f} against a {eff['peak_flops'] / 1e9:.0f} GFLOP/s {eff['peak_dtype']} matmul peak.",
    ]
    return "\n".join(lines) + "\n"


def plot(summary: dict, arms: list[dict], path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.8), dpi=110)
    ax, curves = fig.subplots(1, 2)
    names = list(summary["budgets"][0]["schedules"])
    for i, name in enumerate(names):
        xs, ys, lo, hi = [], [], [], []
        for b in summary["budgets"]:
            f = b["schedules"][name]["flops_ratio"]
            if f["mean"] is not None:
                ci = f["ci95"] or [f["mean"], f["mean"]]
                xs.append(b["tokens_per_param"]), ys.append(f["mean"])
                lo.append(f["mean"] - ci[0]), hi.append(ci[1] - f["mean"])
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", color=f"C{i}", capsize=3, label=name)
    ax.axhline(1.0, color="black", ls="--", lw=0.8, label="scratch")
    ax.set_xscale("log")
    tpp = [b["tokens_per_param"] for b in summary["budgets"]]
    ax.set_xlim(min(tpp) / 1.5, max(tpp) * 1.5)  # also when no schedule reached the target anywhere
    ax.set_xlabel("budget: training tokens per parameter (log)")
    ax.set_ylabel("FLOPs to scratch's loss / scratch's FLOPs")
    ax.set_title("saving against budget (held-out mean, 95% CI; missing = not reached)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    longest = max(b["tokens_per_param"] for b in summary["budgets"])
    seed = summary["heldout_seeds"][0]
    for arm in (a for a in arms if a["budget"] == longest and a["seed"] == seed and a["points"]):
        color = "black" if arm["schedule"] == "scratch" else f"C{names.index(arm['schedule'])}"
        curves.plot(
            [p["flops"] for p in arm["points"]],
            [p["val_loss"] for p in arm["points"]],
            "-",
            color=color,
            lw=1.2,
            label=arm["schedule"],
        )
    curves.set_xlabel("training FLOPs")
    tokenized = summary["preset_config"]["tokenizer"]["train"] or summary["preset_config"]["tokenizer"]["path"]
    curves.set_ylabel(f"val loss (nats/{'token' if tokenized else 'byte'})")
    curves.set_title(f"{longest:g} tokens/param, held-out seed {seed}")
    curves.legend(fontsize=8)
    curves.grid(alpha=0.3)
    fig.suptitle(f"staged vs scratch, preset {summary['preset']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def publish(summary: dict, files: list[Path], md: str, workdir: Path) -> dict:
    """Prefect table + markdown artifacts (in a small report flow) and an MLflow run holding the files."""
    from mlflow import MlflowClient
    from prefect import flow
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    rows = [
        {
            "budget": b["tokens_per_param"],
            "schedule": n,
            "flops_ratio": fmt(s["flops_ratio"]),
            "time_ratio": fmt(s["time_ratio"]),
            "trials": s["trials"],
            "verdict": s["verdict"],
        }
        for b in summary["budgets"]
        for n, s in b["schedules"].items()
    ]
    keys = [f"bench-{summary['preset']}-ratios", f"bench-{summary['preset']}-report"]

    @flow(name="staged-bench-report", persist_result=False)
    def report_flow() -> None:
        create_table_artifact(table=rows, key=keys[0], description="FLOPs/time to target vs scratch, held-out seeds")
        create_markdown_artifact(markdown=md, key=keys[1], description="staged bench report")

    report_flow()
    root = workdir.resolve()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("staged-bench")
    exp_id = (
        exp.experiment_id
        if exp
        else client.create_experiment("staged-bench", artifact_location=(root / "mlartifacts").as_uri())
    )
    run = client.create_run(exp_id, run_name=f"bench-{summary['preset']}", tags={"preset": summary["preset"]})
    metrics = {
        f"flops_ratio.{b['tokens_per_param']:g}.{n}": s["flops_ratio"]["mean"]
        for b in summary["budgets"]
        for n, s in b["schedules"].items()
    }
    metrics |= {k: summary[k] for k in ("throughput_ratio_vs_bare_loop", "orchestration_overhead_fraction")}
    for key, value in metrics.items():
        if value is not None:
            client.log_metric(run.info.run_id, key, float(value))
    for f in files:
        client.log_artifact(run.info.run_id, str(f), "bench")
    client.set_terminated(run.info.run_id, "FINISHED")
    return {"mlflow_tracking_uri": uri, "mlflow_run_id": run.info.run_id, "prefect_artifact_keys": keys}


def write_json(obj: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=float) + "\n")
    return path
