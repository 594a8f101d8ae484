"""`staged bench`: scratch vs staged schedules, side by side in one process, over several seeds.

    staged bench --preset quick --out FILE.json [--workdir DIR] [--schedules a,b] [--seeds 0,1,2] [--set key=value]

Per seed the scratch arm runs first (its final val loss is the target), then each schedule,
stopping once its final stage reaches the target. Arms of one seed run back to back, so a shared machine's
load drifts over both; every speed figure is a ratio of two things measured in this run.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from bench.curves import Point, ratio, spread, to_target
from bench.efficiency import throughput_and_mfu
from bench.report import markdown, plot, publish, write_json
from bench.runner import run_arm
from bench.schedules import SCHEDULES
from bench.spec import PRESETS, Preset, scratch_schedule
from models.data import ByteCorpus


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def final_stage(points: list[Point]) -> list[Point]:
    """Only the last stage's evals count: the target must be reached by the final (12-layer)
    architecture. On a short budget a 6-layer stage can reach an undertrained 12-layer scratch
    loss on its own; that is a finding about the budget, not a staged-training speed-up."""
    last = max(p.stage for p in points)
    return [p for p in points if p.stage == last]


def _per_seed(scratch: dict, arm: dict, target: float) -> dict:
    sp, every = [Point(**p) for p in scratch["points"]], [Point(**p) for p in arm["points"]]
    n_stages = len(arm.get("boundaries") or [None])
    ap = final_stage(every) if max(p.stage for p in every) == n_stages else []
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
    }


def summarise(preset: Preset, arms: list[dict]) -> dict:
    """The benchmark's figures from raw arm curves: pure, so tests can feed it hand-made curves."""
    scratch = {a["seed"]: a for a in arms if a["schedule"] == "scratch"}
    seeds = sorted(scratch)
    targets = [scratch[s]["final_val_loss"] for s in seeds]
    schedules: dict[str, dict] = {}
    for name in dict.fromkeys(a["schedule"] for a in arms if a["schedule"] != "scratch"):
        rows = [
            _per_seed(scratch[a["seed"]], a, scratch[a["seed"]]["final_val_loss"])
            for a in arms
            if a["schedule"] == name
        ]
        schedules[name] = {
            "note": SCHEDULES[name].note if name in SCHEDULES else "",
            "stages": [p.model_dump() for p in SCHEDULES[name].stages] if name in SCHEDULES else [],
            "time_to_target_ratio": spread([r["time_ratio"] for r in rows]),
            "flops_to_target_ratio": spread([r["flops_ratio"] for r in rows]),
            "per_seed": rows,
        }
    ranked = sorted(
        schedules,
        key=lambda n: (
            -schedules[n]["time_to_target_ratio"]["reached"],
            schedules[n]["time_to_target_ratio"]["mean"] or float("inf"),
        ),
    )
    best = ranked[0] if ranked else None
    return {
        "preset": preset.name,
        "seeds": seeds,
        "targets": targets,
        "best_schedule": best,
        "time_to_target_ratio": schedules[best]["time_to_target_ratio"]["mean"] if best else None,
        "flops_to_target_ratio": schedules[best]["flops_to_target_ratio"]["mean"] if best else None,
        "schedules": schedules,
    }


def _log(msg: str) -> None:
    print(msg, flush=True)


def run_bench(preset: Preset, workdir: Path, *, flow: bool = True, publish_artifacts: bool = True, log=_log) -> dict:
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    workdir.mkdir(parents=True, exist_ok=True)
    if flow or publish_artifacts:  # before anything imports prefect or matplotlib: keep their files in the workdir
        from bench.orchestration import embedded_env

        embedded_env(workdir)
    started = time.perf_counter()
    corpora = {seed: ByteCorpus(preset.data, preset.model.context, seed) for seed in preset.seeds}
    log(f"[bench] efficiency: train() vs bare loop, matmul peak ({preset.name})")
    eff = throughput_and_mfu(preset, corpora[preset.seeds[0]])
    arms: list[dict] = []
    for seed in preset.seeds:
        scratch = run_arm(preset, scratch_schedule(preset), corpora[seed], seed).as_dict()
        arms.append(scratch)
        log(f"[bench] seed {seed} scratch: val {scratch['final_val_loss']:.4f} in {scratch['train_seconds']:.1f}s")
        for name in preset.schedules:
            arm = run_arm(preset, SCHEDULES[name], corpora[seed], seed, stop_below=scratch["final_val_loss"]).as_dict()
            arms.append(arm)
            log(
                f"[bench] seed {seed} {name}: val {arm['final_val_loss']:.4f} at {arm['train_seconds']:.1f}s"
                f"{' (target reached)' if arm['stopped_at_target'] else ' (target NOT reached)'}"
            )
    summary = summarise(preset, arms)
    orch = None
    if flow and summary["best_schedule"]:
        from bench.orchestration import orchestration_overhead

        log(f"[bench] orchestration: schedule {summary['best_schedule']} through the Prefect flow")
        orch = orchestration_overhead(preset, SCHEDULES[summary["best_schedule"]], workdir, preset.seeds[0])
    summary |= {
        "throughput_ratio_vs_bare_loop": eff["throughput_ratio_vs_bare_loop"],
        "mfu": eff["mfu"],
        "orchestration_overhead_fraction": orch["orchestration_overhead_fraction"] if orch else None,
        "efficiency": eff,
        "orchestration": orch,
        "machine": machine(),
        "preset_config": preset.model_dump(),
        "timing_notes": "wall time = training only: model build/growth and train() steps; benchmark evals excluded "
        "for every arm; train()'s own 1-batch start/end evals included (< 1 step per stage)",
        "bench_seconds": time.perf_counter() - started,
        "command": "staged " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    }
    md = markdown(summary)
    files = [plot(summary, arms, workdir / f"bench-{preset.name}.png"), workdir / f"bench-{preset.name}.md"]
    files[1].write_text(md)
    files.append(write_json({**summary, "arms": arms}, workdir / f"bench-{preset.name}.json"))
    if publish_artifacts:
        summary["artifacts"] = publish(summary, files, md, workdir)
    summary["files"] = [str(f) for f in files]
    return summary | {"arms": arms}


def build_preset(name: str, schedules: str | None, seeds: str | None, overrides: list[str]) -> Preset:
    from tasks.config import apply_override

    tree = PRESETS[name].model_dump()
    if schedules:
        tree["schedules"] = schedules.split(",")
    if seeds:
        tree["seeds"] = [int(s) for s in seeds.split(",")]
    for item in overrides:
        apply_override(tree, item)
    unknown = [s for s in tree["schedules"] if s not in SCHEDULES]
    if unknown:
        raise ValueError(f"unknown schedules {unknown}; known: {', '.join(SCHEDULES)}")
    return Preset.model_validate(tree)
