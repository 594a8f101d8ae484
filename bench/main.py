"""`staged bench`: scratch vs the field's staged schedules at several budgets, equally tuned, reported on
held-out seeds.

    staged bench --preset quick --out FILE.json [--workdir DIR] [--schedules a,b] [--set key=value]
                 [--only efficiency|orchestration]

Per budget (bench/suite/protocol.py): every arm tuned with the same Optuna trials on the tuning seeds, then
scratch and every schedule on the held-out seeds. Then the throughput of train() against an independent
bare loop (bench/overhead/efficiency.py), and the best schedule once through the Prefect flow for the
orchestration overhead (bench/overhead/orchestration.py). Arms of one seed run back to back, so a shared
machine's load drifts over both; every speed figure is a ratio of two things measured in this run.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from bench.overhead.efficiency import throughput_and_mfu
from bench.suite.presets import PRESETS
from bench.suite.protocol import run_budget
from bench.suite.report import markdown, plot, publish, write_json
from bench.suite.runner import open_corpora
from bench.suite.schedules import SCHEDULES, resolve
from bench.suite.spec import Preset, budget


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _log(msg: str) -> None:
    print(msg, flush=True)


def _flow_choice(preset: Preset, budgets: list[dict]) -> tuple[str, dict]:
    """The flow runs the best schedule (lowest held-out FLOPs ratio) at the preset's flow budget."""
    at = next(b for b in budgets if b["tokens_per_param"] == preset.flow_tokens_per_param)
    name = at["best_schedule"] or preset.schedules[0]
    return name, at["schedules"][name]["best_params"]


def orchestration(preset: Preset, workdir: Path, schedule: str, params: dict, log) -> dict:
    from bench.overhead.orchestration import orchestration_overhead
    from bench.suite.spec import HParams

    log(f"[bench] orchestration: {schedule} through the Prefect flow at {preset.flow_tokens_per_param:g} tokens/param")
    hp, b = HParams(**params), budget(preset, preset.flow_tokens_per_param)
    return orchestration_overhead(
        preset, resolve(schedule, preset.flow_tokens_per_param), hp, b, workdir, preset.heldout_seeds[0]
    )


def run_bench(
    preset: Preset,
    workdir: Path,
    *,
    flow: bool = True,
    publish_artifacts: bool = True,
    only: str | None = None,
    log=_log,
) -> dict:
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    workdir.mkdir(parents=True, exist_ok=True)
    if flow or publish_artifacts:  # before anything imports prefect or matplotlib: keep their files in the workdir
        from bench.overhead.orchestration import embedded_env

        embedded_env(workdir)
    started = time.perf_counter()
    head = {"preset": preset.name, "command": "staged " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
    seeds = dict.fromkeys([*preset.tuning.seeds, *preset.heldout_seeds])
    if only == "orchestration":
        orch = orchestration(preset, workdir, preset.schedules[0], preset.defaults.model_dump(), log)
        return head | {
            "orchestration_overhead_fraction": orch["orchestration_overhead_fraction"],
            "orchestration": orch,
        }
    corpora = open_corpora(preset, [preset.heldout_seeds[0]] if only == "efficiency" else seeds, workdir)
    log(f"[bench] efficiency: train() vs an independent bare loop, matmul peak ({preset.name})")
    eff = throughput_and_mfu(preset, corpora[preset.heldout_seeds[0]])
    log(f"[bench] throughput ratio {eff['throughput_ratio_vs_bare_loop']:.3f}: {eff['note']}")
    if only == "efficiency":
        return head | {"throughput_ratio_vs_bare_loop": eff["throughput_ratio_vs_bare_loop"], "efficiency": eff}
    budgets, arms = [], []
    for tokens_per_param in preset.budgets:
        figures, raw = run_budget(preset, tokens_per_param, corpora, workdir, log)
        budgets.append(figures)
        arms += raw
    orch = orchestration(preset, workdir, *_flow_choice(preset, budgets), log) if flow else None
    summary = head | {
        "tuning_seeds": preset.tuning.seeds,
        "heldout_seeds": preset.heldout_seeds,
        "trials_per_arm": preset.tuning.trials,
        "search_space": preset.tuning.space.model_dump(),
        "budgets": budgets,
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
    """A preset with the command line's changes: schedules, held-out seeds, ``--set`` overrides."""
    from tasks.config import apply_override

    tree = PRESETS[name].model_dump()
    if schedules:
        tree["schedules"] = schedules.split(",")
    if seeds:
        if not all(s.strip().lstrip("-").isdigit() for s in seeds.split(",")):
            raise ValueError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 4,5,6")
        tree["heldout_seeds"] = [int(s) for s in seeds.split(",")]
    for item in overrides:
        apply_override(tree, item)
    unknown = [s for s in tree["schedules"] if s not in SCHEDULES]
    if unknown:
        raise ValueError(f"unknown schedules {unknown}; known: {', '.join(SCHEDULES)}")
    return Preset.model_validate(tree)
