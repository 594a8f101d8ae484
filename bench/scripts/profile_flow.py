"""Where the orchestration overhead goes: bench/overhead/orchestration.py's measurement once, under cProfile.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.scripts.profile_flow \
        [--preset quick] [--workdir DIR] [--top 25] [--out FILE.pstats] [--timers]

Runs what ``staged bench --only orchestration`` runs (the preset's first schedule, untuned defaults, at the
flow budget; no tuning protocol) with a profiler in every thread (the main one runs the flow and its stage
tasks; Prefect's task runner threads write the cards, summary and comparison beside it; Prefect's and
MLflow's event-loop threads mostly wait). Prints the measurement's own figures (fraction, per-task seconds),
the exclusive time of each package (ours, prefect, mlflow, torch, sqlalchemy...) in the main thread and in
all threads, and the top cumulative entries of ours / prefect / mlflow in the main thread. ``--timers``:
no profiler (whose own cost inflates Python-heavy code 1.5-2x), only wall-clock timers around the functions in
``TIMED`` (every module-level reference to each is wrapped), their seconds and calls.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = tuple(str(ROOT / d) for d in ("tasks", "models", "flows", "bench"))


TIMED = [  # module:qualified name; where the flow, the stage, the gate and the publications spend their time
    "tasks.publish.monitor:tag_flow_run",
    "tasks.stage:pipeline_tokenizer",
    "tasks.stage:key_of",
    "tasks.registry.runs:PipelineRun.finish",
    "prefect.futures:PrefectConcurrentFuture.result",  # the flow waiting for its publications
    "models.data.corpus:open_corpus",
    "tasks.driver:prepare",
    "models.train.loop:train",
    "tasks.workspace:download_with_optimizer",
    "tasks.store.checkpoint:save",
    "models.train.loop:_evaluate_on_rank0",
    "models.train.speed:peak_flops",
    "tasks.config.identity:code_version",
    "tasks.registry.client:find_version",
    "tasks.stage:_register",
    "tasks.store.model_dir:save_model",
    "tasks.store.model_dir:save_optimizer",
    "tasks.registry.pyfunc:add_pyfunc",
    "tasks.registry.client:register",
    "tasks.registry.client:delete_orphans",
    "tasks.store.manifest:write_manifest",
    "tasks.gate:run_gate",
    "tasks.registry.lookup:load_version",
    "tasks.gate:measure",
    "tasks.gate:_decide_and_record",
    "tasks.publish.card:write_card",
    "tasks.publish.report:plot_losses",
    "tasks.publish.report:publish_summary",
    "tasks.publish.compare:publish_comparison",
    "tasks.publish.monitor:StageWatch.publish",
    "tasks.registry.runs:PipelineRun.open",
]


class Timers:
    """Wall-clock seconds and calls of the ``TIMED`` functions, every module-level reference to each wrapped."""

    def __init__(self, names: list[str]):
        import importlib

        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        for name in names:
            module, qual = name.split(":")
            owner = importlib.import_module(module)
            *path, attr = qual.split(".")
            for part in path:
                owner = getattr(owner, part)
            self._wrap(name, owner, attr)

    def _wrap(self, name: str, owner, attr: str) -> None:
        import functools

        original = getattr(owner, attr)
        if type(original).__name__ == "Task":  # a Prefect task: time its function
            owner, attr, original = original, "fn", original.fn

        def timed(*args, **kwargs):
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - began
                self.calls[name] += 1

        wrapper = functools.wraps(original)(timed)
        setattr(owner, attr, wrapper)
        if not isinstance(owner, type(sys)):
            return
        for module in list(sys.modules.values()):  # `from x import f` copies: replace those too
            for key, value in list(getattr(module, "__dict__", {}).items()):
                if value is original:
                    setattr(module, key, wrapper)

    def report(self) -> str:
        rows = sorted(self.seconds.items(), key=lambda kv: -kv[1])
        return "\n".join(f"  {s:8.3f} s {self.calls[n]:4d}x  {n}" for n, s in rows)


def package(filename: str) -> str:
    """Whose code a profile entry is: ours, or the installed package it lives in."""
    if filename.startswith(OURS):
        return "ours"
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins"
    return "stdlib"


class ThreadProfiles:
    """One cProfile.Profile per thread: the main one, and each thread started while profiling."""

    def __init__(self):
        self.main = cProfile.Profile()
        self.others: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def _start_in_thread(self, *_):
        sys.setprofile(None)
        prof = cProfile.Profile()
        with self._lock:
            self.others.append(prof)
        prof.enable()

    def __enter__(self) -> ThreadProfiles:
        threading.setprofile(self._start_in_thread)
        self.main.enable()
        return self

    def __exit__(self, *exc) -> None:
        self.main.disable()
        threading.setprofile(None)

    def stats(self, threads: str = "main") -> pstats.Stats | None:
        """``main``: the main thread's; ``others``: every other thread's; ``all``: both."""
        profs = ([self.main] if threads != "others" else []) + (self.others if threads != "main" else [])
        st = None
        for prof in profs:
            try:
                st = pstats.Stats(prof) if st is None else st.add(prof)
            except (TypeError, ValueError):  # a thread that never ran a profiled call
                pass
        return st


def by_package(st: pstats.Stats) -> dict[str, float]:
    """Exclusive seconds per package."""
    out: dict[str, float] = defaultdict(float)
    for (filename, _, _), (_, _, tottime, _, _) in st.stats.items():
        out[package(filename)] += tottime
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def top_cumulative(st: pstats.Stats, who: str, n: int) -> list[tuple[float, int, str]]:
    rows = [
        (cum, calls, f"{Path(f).name}:{line}({name})")
        for (f, line, name), (_, calls, _, cum, _) in st.stats.items()
        if package(f) == who
    ]
    return sorted(rows, reverse=True)[:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--workdir", default=None, help="default: a fresh directory under /tmp")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--timers", action="store_true", help="no profiler: wall-clock timers around TIMED only")
    ap.add_argument(
        "--out", help="dump the main thread's stats here, the other threads' to FILE.threads (pstats, snakeviz)"
    )
    args = ap.parse_args(argv)
    workdir = Path(args.workdir or f"/tmp/staged-profile-{int(time.time())}")
    from bench.overhead.orchestration import embedded_env

    embedded_env(workdir)  # before prefect is imported
    import torch

    from bench.main import orchestration
    from bench.suite.presets import PRESETS

    torch.set_num_threads(1)
    preset = PRESETS[args.preset]
    run = lambda: orchestration(preset, workdir, preset.schedules[0], preset.defaults.model_dump(), print)  # noqa: E731
    if args.timers:
        import flows.staged  # noqa: F401  everything the flow imports, before its functions are wrapped

        timers = Timers(TIMED)
        orch = run()
    else:
        with ThreadProfiles() as profiles:
            orch = run()
    keep = ("orchestration_overhead_fraction", "flow_seconds", "pure_train_seconds", "breakdown_seconds")
    keep += ("task_run_seconds", "prefect_server_start_seconds_excluded", "mlflow_store_creation_seconds_excluded")
    print(json.dumps({k: orch[k] for k in keep}, indent=1))
    if args.timers:
        print("\nwall-clock seconds (no profiler), calls, function:\n" + timers.report())
        return 0
    main_st, all_st = profiles.stats("main"), profiles.stats("all")
    if args.out:  # the main thread's, and the other threads' beside it
        main_st.dump_stats(args.out)
        if others := profiles.stats("others"):
            others.dump_stats(f"{args.out}.threads")
    pkgs = [(k, v) for k, v in by_package(main_st).items() if v >= 0.05]
    print("\nexclusive seconds by package, main thread:", ", ".join(f"{k} {v:.2f}" for k, v in pkgs))
    pkgs = [(k, v) for k, v in by_package(all_st).items() if v >= 0.05]
    print(f"exclusive seconds by package, all {1 + len(profiles.others)} threads (waits included):")
    print("  " + ", ".join(f"{k} {v:.2f}" for k, v in pkgs))
    for who in ("ours", "prefect", "mlflow"):
        print(f"\ntop cumulative, main thread, {who}:")
        for cum, calls, where in top_cumulative(main_st, who, args.top):
            print(f"  {cum:8.3f} s {calls:7d}x  {where}")
    print("\ntop cumulative, ours, the other threads (the publications beside the training):")
    for cum, calls, where in top_cumulative(profiles.stats("others"), "ours", args.top):
        print(f"  {cum:8.3f} s {calls:7d}x  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
