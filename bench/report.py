"""Turn benchmark results into what a person looks at: a two-panel PNG (loss vs wall time and vs
FLOPs, stage boundaries marked), a markdown table, and both as Prefect and MLflow artifacts."""

from __future__ import annotations

import json
from pathlib import Path

GOALS = {
    "time_to_target_ratio": ("<=", 0.60),
    "throughput_ratio_vs_bare_loop": (">=", 0.95),
    "orchestration_overhead_fraction": ("<=", 0.03),
    "mfu": (">=", 0.30),
}


def _fmt(s: dict) -> str:
    if s["mean"] is None:
        got = f"{s['reached']}/{s['n']} seeds reached"
        return got if s["min"] is None else f"{got} (reached: {s['min']:.3f}–{s['max']:.3f})"
    return f"{s['mean']:.3f} ± {s['std']:.3f} [{s['min']:.3f}–{s['max']:.3f}]"


def _verdict(name: str, value: float | None, goals: dict) -> str:
    if value is None:
        return "not measured"
    op, goal = goals[name]
    ok = value <= goal if op == "<=" else value >= goal
    return f"{'met' if ok else 'NOT met'} (goal {op} {goal})"


def _stage_label(st: dict, k: int) -> str:
    """e.g. `6L×0.3 masked transfer continue {'lr': 0.004}`: growth and policies only where not the default."""
    growth, schedule = st.get("growth") or {}, st.get("schedule") or {}
    words = [
        f"{st['n_layers']}L"
        + (f" d{st['model']['d_model']}" if "d_model" in (st.get("model") or {}) else "")
        + f"×{st['share']:g}"
    ]
    words += [growth["operator"]] if k and growth.get("operator", "stack") != "stack" else []
    words += ["transfer"] if k and st.get("optimizer") == "transfer" else []
    words += [schedule["policy"]] if schedule.get("policy", "restart") != "restart" else []
    return " ".join(words + ([str(st["train"])] if st["train"] else []))


def markdown(summary: dict) -> str:
    goals = {**GOALS, "mfu": (">=", 0.45 if summary["efficiency"].get("peak_dtype") == "bfloat16" else 0.30)}
    lines = [
        f"## staged bench — preset `{summary['preset']}`, seeds {summary['seeds']}",
        "",
        "| schedule | stages (layers × share of scratch steps) | time-to-target / scratch "
        "| FLOPs-to-target / scratch |",
        "|---|---|---|---|",
    ]
    for name, s in summary["schedules"].items():
        stages = " → ".join(_stage_label(st, k) for k, st in enumerate(s["stages"]))
        lines.append(
            f"| {name}{' (best)' if name == summary['best_schedule'] else ''} | {stages} | "
            f"{_fmt(s['time_to_target_ratio'])} | {_fmt(s['flops_to_target_ratio'])} |"
        )
    lines += [
        "",
        "Per seed (target = that seed's scratch final val loss; only the final 12-layer stage's evals count):",
        "",
        "| schedule | seed | target | scratch s | staged s to target | time ratio | FLOPs ratio "
        "| a smaller stage got there first |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary["schedules"].items():
        for r in s["per_seed"]:
            f = lambda v, p=3: "—" if v is None else f"{v:.{p}f}"  # noqa: E731
            lines.append(
                f"| {name} | {r['seed']} | {r['target']:.4f} | {f(r['scratch_seconds'], 1)} | "
                f"{f(r['staged_seconds'], 1)} | {f(r['time_ratio'])} | {f(r['flops_ratio'])} | "
                f"{'yes' if r.get('reached_before_final_stage') else 'no'} |"
            )
    lines += ["", "| figure | value | verdict |", "|---|---|---|"]
    for key in GOALS:
        v = summary.get(key)
        lines.append(f"| {key} | {'—' if v is None else f'{v:.3f}'} | {_verdict(key, v, goals)} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, arms: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["scratch", *summary["schedules"]]
    colors = {n: ("black" if n == "scratch" else f"C{i}") for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), dpi=110)
    for ax, axis, label in (
        (axes[0], "seconds", "training wall time, s (evals excluded)"),
        (axes[1], "flops", "training FLOPs"),
    ):
        for arm in arms:
            xs = [p[axis] for p in arm["points"]]
            ys = [p["val_loss"] for p in arm["points"]]
            first = arm["seed"] == summary["seeds"][0]
            ax.plot(
                xs,
                ys,
                "-",
                color=colors[arm["schedule"]],
                lw=1.4 if first else 0.8,
                alpha=1 if first else 0.5,
                label=arm["schedule"] if first else None,
            )
            if first:
                for b in arm["boundaries"][1:]:
                    ax.axvline(b[axis], color=colors[arm["schedule"]], ls=":", lw=0.9)
                    ax.text(
                        b[axis],
                        0.98,
                        f" →{b['n_layers']}L",
                        transform=ax.get_xaxis_transform(),
                        va="top",
                        fontsize=7,
                        color=colors[arm["schedule"]],
                    )
        ax.axhline(summary["targets"][0], color="grey", ls="--", lw=0.8, label=f"target (seed {summary['seeds'][0]})")
        ax.set_xlabel(label)
        ax.set_ylabel("val loss (nats/byte)")
        finals = [p["val_loss"] for a in arms for p in a["points"]]
        ax.set_ylim(min(finals) - 0.05, min(max(finals), min(finals) + 1.5))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"staged vs scratch, preset {summary['preset']} (thick: seed {summary['seeds'][0]}; thin: other seeds)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def publish(summary: dict, files: list[Path], md: str, workdir: Path) -> dict:
    """Prefect table + markdown artifacts (in a small report flow) and an MLflow run holding the files."""
    from mlflow import MlflowClient
    from prefect import flow
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    rows = [
        {"schedule": n, "time_ratio": _fmt(s["time_to_target_ratio"]), "flops_ratio": _fmt(s["flops_to_target_ratio"])}
        for n, s in summary["schedules"].items()
    ]

    @flow(name="staged-bench-report", persist_result=False)
    def report_flow() -> None:
        create_table_artifact(
            table=rows, key=f"bench-{summary['preset']}-ratios", description="time/FLOPs to target vs scratch"
        )
        create_markdown_artifact(
            markdown=md, key=f"bench-{summary['preset']}-report", description="staged bench report"
        )

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
    for key in ("time_to_target_ratio", "flops_to_target_ratio", *list(GOALS)[1:]):
        if summary.get(key) is not None:
            client.log_metric(run.info.run_id, key, float(summary[key]))
    for f in files:
        client.log_artifact(run.info.run_id, str(f), "bench")
    client.set_terminated(run.info.run_id, "FINISHED")
    return {
        "mlflow_tracking_uri": uri,
        "mlflow_run_id": run.info.run_id,
        "prefect_artifact_keys": [f"bench-{summary['preset']}-ratios", f"bench-{summary['preset']}-report"],
    }


def write_json(obj: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=float) + "\n")
    return path
