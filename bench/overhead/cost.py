"""What a stage costs beyond its training, against the floor of writing its bytes once.

    staged bench --preset cost --out docs/bench-cost.json [--workdir DIR] [--set sizes=s,m,l] [--set repeats=3]
    (or: python -m bench.overhead.cost --sizes s,m,l --out docs/bench-cost.json)

For each size, a two-stage Llama pipeline (transformers' LlamaForCausalLM, a BPE of 2048 tokens) runs
through the real Prefect flow with the embedded MLflow store: stage 1 registers a freshly built model
(0 steps), stage 2 grows it to twice the depth by identity growth (0 steps) and registers it; the gate
then runs on stage 2's version. Nothing is trained, so what is left is the cost of the pipeline itself.
Side by side, in the same run and on the same disk:

- floor: write + fsync + sha256 of the same safetensors bytes that stage 2's version holds, once
  (``safetensors.torch.save_file`` of its tensors, ``os.fsync``, one sha256 pass over the file);
- registration: stage 2's "registering" phase (writing the version directory, its manifest, the MLflow
  run, params, metrics and the model version), from the stage's own timer (tasks/publish/monitor.py);
- parent load: stage 2 reading (and verifying) stage 1's version;
- gate: the evaluation-gate task's duration, from Prefect's records of the flow run;
- flow: the whole flow's wall time (Prefect's ephemeral server started before the clock, as
  bench/overhead/orchestration.py).

Kept out of the README's test command (the largest size writes a 0.8 GB version; ~5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

# (hidden, layers after growth): ~13M, ~52M and ~210M parameters at a 2048-token vocabulary: 16x in bytes
SIZES = {"s": (256, 16), "m": (512, 16), "l": (1024, 16), "xs": (64, 4)}  # xs: the test's (seconds)


def pipeline(size: str, name: str):
    from tasks.config import PipelineConfig

    d, layers = SIZES[size]
    tree = {
        "registry": {"model_name": name},
        "retry": {"retries": 0},
        "checkpoint": {"every": 0},
        "data": {"format": "text", "encoding_errors": "replace", "max_bytes": 400_000},
        "tokenizer": {"train": {"vocab_size": 2048}},
        "model": {
            "arch": "llama",
            "d_model": d,
            "n_heads": max(2, d // 64),
            "n_kv_heads": max(1, d // 128),
            "d_ff": d * 11 // 4,
        },
        "train": {"batch_size": 2, "eval_batches": 1, "eval_every": 10**6},
        "gate": {"eval_batches": 1, "batch_size": 2},
        "limits": {"max_d_model": 16384},
        "stages": [
            {"n_layers": layers // 2, "steps": 0},
            {"n_layers": layers, "steps": 0, "growth": {"operator": "identity"}},
        ],
    }
    tree["model"]["context"] = 64
    return PipelineConfig.model_validate(tree)


def floor_seconds(version_dir: Path, scratch: Path) -> tuple[float, int]:
    """Write + fsync + one sha256 pass of the version's safetensors tensors, file by file; (seconds, bytes)."""
    from safetensors.torch import load_file, save_file

    from tasks.store import fsync, sha256_file

    total_s, total_bytes = 0.0, 0
    for path in sorted(version_dir.glob("*.safetensors")):
        tensors = load_file(path)
        out = scratch / path.name
        t = time.perf_counter()
        save_file(tensors, out, metadata={"format": "pt"})
        fsync(out)
        sha256_file(out)
        total_s += time.perf_counter() - t
        total_bytes += out.stat().st_size
        out.unlink()
        del tensors
    return total_s, total_bytes


def measure(size: str, workdir: Path) -> dict:
    from bench.overhead.orchestration import embedded_env, task_run_seconds

    embedded_env(workdir)
    from prefect import flow

    from flows.staged import staged_training
    from tasks.registry import Registry, fetch

    @flow(name="staged-bench-warmup", persist_result=False)
    def _warmup() -> None:
        return None

    _warmup()  # Prefect's ephemeral server: started before the clock
    registry = Registry.resolve(workdir)
    registry.client().search_registered_models()  # the embedded store's schema: created before the clock
    cfg = pipeline(size, f"cost-{size}-{int(time.time())}")
    t = time.perf_counter()
    state = staged_training(cfg, str(workdir), return_state=True)
    flow_s = time.perf_counter() - t
    results = state.result()
    tasks = task_run_seconds(state.state_details.flow_run_id)
    child = results[-1]
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        version_dir = fetch(registry, child.ref, Path(tmp) / "version").path
        floor_s, n_bytes = floor_seconds(version_dir, Path(tmp))
    phases = child.phase_seconds
    register_s = phases["registering"]
    gate_s = sum(s for n, s in tasks.items() if n.startswith("gate-"))
    return {
        "size": size,
        "params": child.params,
        "safetensors_bytes": n_bytes,
        "floor_seconds": floor_s,
        "registration_seconds": register_s,
        "registration_over_floor": register_s / floor_s,
        "parent_load_seconds": phases.get("loading the parent"),
        "grow_stage_phase_seconds": phases,
        "gate_seconds": gate_s,
        "flow_seconds": flow_s,
        "stage_seconds": [r.seconds for r in results],
        "task_run_seconds": tasks,
    }


def _median_of(runs: list[dict]) -> dict:
    """Each figure's median over repeated runs (the disk's write-back makes single runs noisy), all values kept."""
    keys = ("floor_seconds", "registration_seconds", "parent_load_seconds", "gate_seconds", "flow_seconds")
    row = dict(runs[len(runs) // 2])
    for k in keys:
        row[k] = statistics.median(r[k] for r in runs)
        row[k.replace("_seconds", "_runs")] = [r[k] for r in runs]
    row["registration_over_floor"] = statistics.median(r["registration_over_floor"] for r in runs)
    row["registration_over_floor_runs"] = [r["registration_over_floor"] for r in runs]
    return row


def run(sizes: list[str], workdir: Path, out: Path | None, repeats: int = 3, log=print) -> dict:
    rows = []
    for size in sizes:
        log(f"[cost] size {size}: hidden {SIZES[size][0]}, {SIZES[size][1]} layers after growth, {repeats} runs")
        row = _median_of([measure(size, workdir) for _ in range(repeats)])
        log(
            f"[cost] {size} (medians): {row['params'] / 1e6:.0f}M params, {row['safetensors_bytes'] / 1e9:.2f} GB: "
            f"floor {row['floor_seconds']:.2f} s, registration {row['registration_seconds']:.2f} s "
            f"({row['registration_over_floor']:.2f}x), parent load {row['parent_load_seconds']:.2f} s, "
            f"gate {row['gate_seconds']:.2f} s, flow {row['flow_seconds']:.1f} s"
        )
        rows.append(row)
    report = {"command": " ".join(["staged", *sys.argv[1:]]), "goal_registration_over_floor": 1.5}
    report["sizes"] = rows
    if out is not None:
        out.write_text(json.dumps(report, indent=1) + "\n")
        log(f"[cost] wrote {out}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead.cost", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="s,m,l", help="comma-separated, of " + ", ".join(SIZES))
    parser.add_argument("--workdir", type=Path, default=Path(".staged-bench-cost"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="flows per size; the medians are reported")
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",")
    if bad := [s for s in sizes if s not in SIZES]:
        print(f"error: unknown size {bad[0]!r} (choose from {', '.join(SIZES)})", file=sys.stderr)
        return 2
    run(sizes, args.workdir, args.out, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
