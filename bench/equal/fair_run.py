"""The driver of issue 28's protocol (bench/equal/fair.py): cost estimate first, then right-sizing, equal grid
tuning and the held-out runs per budget, every study and run cached under the workdir (stop and rerun: it
resumes), the raw file rewritten after each budget ("partial": true until the end).

    python -m bench.equal.fair_run --preset cpu --workdir /tmp/fair [--estimate]
    python -m bench.equal.fair_run --preset cpu --tiny --workdir /tmp/fair-tiny     # seconds: the tests' run
    python -m bench.equal.report /tmp/fair/fair-cpu-raw.json --out docs/llama-budgets.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import time
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from bench.equal.fair import (
    Fair,
    Knobs,
    arms,
    best_depth,
    estimate,
    hparams,
    ratio_resolution,
    right_size,
    staged,
    test_batches,
    with_knobs,
)
from bench.equal.fair_presets import PRESETS, tiny
from bench.equal.study import _cached, heldout_arm, heldout_split
from bench.suite.runner import open_corpora, run_arm
from bench.suite.spec import HParams, train_flops_per_token
from bench.suite.tune import FAILED, storage_url, study_name
from models.train.loop import evaluate, resolve_device
from tasks.driver import StageFailed


def _costs(fair: Fair, depth: int, corpus, test: list, clock=time.perf_counter) -> tuple[float, float]:
    """(seconds per training step, seconds per evaluation of the test split) of a ``depth``-layer model on this
    machine, on the preset's device and precision (the median of 6 steps after one warm-up; compile excluded).
    ``clock``: wall time, or ``time.process_time`` for this process's CPU time (what one idle core would take,
    on a CPU; a shared machine's wall time is longer by its load)."""
    from models.families.family import token_loss
    from models.families.lookup import family_of

    cfg, train = fair.at_depth(depth).model, fair.preset.train
    device = resolve_device(train.device)
    model = family_of(cfg).build(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x, y = (t.to(device) for t in corpus.batch(0, train.batch_size))
    times = []
    for _ in range(7):
        t = clock()
        with torch.autocast(device.type, torch.bfloat16, enabled=train.precision == "bf16"):
            loss = token_loss(family_of(model).logits(model, x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(clock() - t)
    t = clock()
    evaluate(model, [(a.to(device), b.to(device)) for a, b in test])
    return sorted(times[1:])[3], clock() - t


def _per_run(fair: Fair, corpus, val: list, steps: dict[int, float]) -> tuple[float, float]:
    """(wall, CPU) seconds a run costs beside its training steps: one 2-step from-scratch run of the shallowest
    depth through the stage driver, validation evaluations at its start and end included, minus its 2 steps."""
    d = min(fair.depths)
    b = fair.budget(d, fair.budgets[0])
    two = b.__class__(b.tokens_per_param, b.params, 2, 10**9, b.tokens_per_step)
    wall, cpu = time.perf_counter(), time.process_time()
    run_arm(fair.preset, arms(d, d)["scratch"], corpus, fair.tuning_seeds[0], fair.preset.defaults, two, eval_set=val)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return max(0.0, wall - 2 * steps[d]), max(0.0, cpu - 2 * steps[d])


def grid_study(name: str, workdir: Path, space: dict[str, list], objective, log) -> list[dict]:
    """Every point of ``space`` once, in a resumable SQLite Optuna study: each point without a completed trial is
    enqueued and run, so a rerun runs only those; a trial an interrupted run left RUNNING is marked failed and
    its point runs again. Returns each point's completed trial as {params..., value}, in the order they ran."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name, storage=storage_url(workdir), direction="minimize", load_if_exists=True
    )
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)  # left behind by an interrupted run
    point = lambda params: tuple(params[k] for k in space)  # noqa: E731
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))  # enqueued by an interrupted rerun
    queued = {point(t.system_attrs["fixed_params"]) for t in waiting}

    def done() -> dict[tuple, optuna.trial.FrozenTrial]:  # each point's first completed trial
        trials = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: -t.number)
        return {point(t.params): t for t in trials}

    grid = [dict(zip(space, values)) for values in itertools.product(*space.values())]
    todo = [p for p in grid if point(p) not in done()]
    for p in todo:
        if point(p) not in queued:
            study.enqueue_trial(p)

    def trial(t: optuna.Trial) -> float:
        params = {k: t.suggest_categorical(k, v) for k, v in space.items()}
        value = objective(params)
        log(f"[tune] {name} {len(done()) + 1}/{len(grid)}: {value:.4f} at {params}")
        return value

    if todo:
        study.optimize(trial, n_trials=len(todo))
    return [{**t.params, "value": float(t.value)} for t in sorted(done().values(), key=lambda t: t.number)]


def run(fair: Fair, workdir: Path, raw: Path, log=print, only_estimate: bool = False) -> dict:
    started, before = time.perf_counter(), _sittings(raw)
    workdir.mkdir(parents=True, exist_ok=True)
    seeds = list(dict.fromkeys([*fair.tuning_seeds, *fair.heldout]))
    corpora = open_corpora(fair.preset, seeds, workdir)
    any_corpus = corpora[seeds[-1]]
    n_val, n_test = test_batches(fair, fair.val_tokens), test_batches(fair, fair.test_tokens)
    val, test = heldout_split(any_corpus, n_val, n_test, fair.eval_batch)
    costs = {d: _costs(fair, d, any_corpus, test) for d in fair.depths}
    cpu = {d: _costs(fair, d, any_corpus, test, time.process_time) for d in fair.depths}
    steps, evals = {d: c[0] for d, c in costs.items()}, {d: c[1] for d, c in costs.items()}
    per_run = _per_run(fair, any_corpus, val, steps)
    cost = estimate(fair, steps, evals, per_run[0])
    cpu_cost = estimate(fair, {d: c[0] for d, c in cpu.items()}, {d: c[1] for d, c in cpu.items()}, per_run[1])
    log(
        f"[{fair.name}] estimated cost: {cost / 60:.1f} min wall on this machine now (load {os.getloadavg()[0]:.1f}), "
        f"{cpu_cost / 60:.1f} min of one core's CPU time ({torch.get_num_threads()} threads; "
        f"{len(test) * fair.eval_batch * fair.preset.model.context:,} test tokens, "
        f"ratio resolved to {ratio_resolution(fair):.3f}; "
        f"seconds per step {_short(steps)}, per test evaluation {_short(evals)}, per run beside its steps "
        f"{per_run[0]:.2f}; target: the costliest depth)"
    )
    if only_estimate:
        return {"estimated_seconds": cost, "estimated_cpu_seconds": cpu_cost}

    def final_val(arm, hp, b) -> float:
        finals = []
        for seed in fair.tuning_seeds:
            try:  # the preset's depth is not read: each stage has its own (bench.suite.spec.pipeline_config)
                finals.append(run_arm(fair.preset, arm, corpora[seed], seed, hp, quiet(b), eval_set=val).final_val_loss)
            except StageFailed:
                return FAILED
        return statistics.fmean(finals) if all(math.isfinite(x) for x in finals) else FAILED

    quiet = lambda b: b.__class__(b.tokens_per_param, b.params, b.scratch_steps, 10**9, b.tokens_per_step)  # noqa: E731

    def tune_one(name: str, arm, b, target: int, tpp: float) -> tuple[HParams, Knobs, dict]:
        """The LR x shape grid (growth knobs at their defaults), then a staged arm's knob grid at its best LR."""
        ident = {"fair": fair.name, "budget": tpp, "arm": arm.model_dump(), "target": target, "v": 30}
        as_hp = lambda t: hparams(t["lr"], t["shape"])  # noqa: E731
        knob = lambda k: with_knobs(arm, fair, Knobs(**k), b, target)  # noqa: E731
        grid = {"lr": fair.lrs(), "shape": ["cosine", "wsd"]}
        trials = grid_study(
            study_name(f"{name}-lr", ident), workdir, grid, lambda t: final_val(knob({}), as_hp(t), b), log
        )
        best = min(trials, key=lambda t: t["value"])
        hp, knobs, knob_trials = as_hp(best), Knobs(), []
        if staged(arm):
            space = {"point": list(fair.points), "lr_mult": list(fair.lr_mults), "rewarm": list(fair.rewarms)}
            space["new_warmup"] = list(fair.new_warmups)
            name_k = study_name(f"{name}-knobs", ident | {"hp": hp.model_dump()})
            knob_trials = grid_study(name_k, workdir, space, lambda k: final_val(knob(k), hp, b), log)
            kb = min(knob_trials, key=lambda t: t["value"])
            if kb["value"] < best["value"]:  # the defaults stay unless a knob point beats them
                knobs = Knobs(**{k: kb[k] for k in space})
        value = min([best["value"], *(t["value"] for t in knob_trials)])
        record = {"best_params": hp.model_dump(), "knobs": vars(knobs), "best_value": value, "trials": trials}
        return hp, knobs, record | {"knob_trials": knob_trials}

    def right_sizing(tpp: float, key: str) -> dict:
        """Each depth from scratch at the budget (WSD at each LR of the grid; a depth's loss: its best LR's), the best
        depth once more at ``within`` x the budget (the line), and the target: bench.equal.fair.right_size."""

        def loss(name: str, depth: int, lr: float, b) -> float:  # one from-scratch run, cached under sizing/
            one = arms(depth, depth)["scratch"]
            return _cached(workdir / "sizing" / name, lambda: {"loss": final_val(one, hparams(lr, "wsd"), b)})["loss"]

        by_lr = {
            d: {lr: loss(f"{key}-{d}-{lr:.4g}.json", d, lr, fair.budget(d, tpp)) for lr in fair.lrs()}
            for d in fair.depths
        }
        lrs = {d: min(by, key=by.get) for d, by in by_lr.items()}
        sweep = {d: by_lr[d][lrs[d]] for d in fair.depths}
        best = best_depth(sweep)
        line = loss(f"{key}-{best}-{lrs[best]:.4g}-line.json", best, lrs[best], fair.line_budget(best, tpp))
        out = {"losses": sweep, "lrs": lrs, "by_lr": by_lr, "best": best, "line": line, "within": fair.within}
        return out | {"target": right_size(sweep, line), "reference": max(fair.depths)}

    runs, tuned, sizing = [], {}, {}
    for tpp in fair.budgets:
        key = f"{tpp:g}"
        sizing[key] = right_sizing(tpp, key)
        target = sizing[key]["target"]
        b = fair.budget(target, tpp)
        sizing[key]["tokens_per_param"] = round(b.tokens_per_param, 2)  # the right-sized target's own
        log(f"[{fair.name}] {key}: right-sized target {target} layers ({sizing[key]})")
        p = fair.at_depth(target)
        tuned[key] = {}
        for name, arm in arms(target, max(fair.depths)).items():
            hp, knobs, tuned[key][name] = tune_one(name, arm, b, target, tpp)
            for seed in fair.heldout:
                path = workdir / "arms" / f"{key}-{seed}-{name}.json"
                out = heldout_arm(
                    fair.preset, with_knobs(arm, fair, knobs, b, target), b, corpora[seed], seed, hp, (val, test), path
                )
                flops = b.scratch_steps * b.tokens_per_step * train_flops_per_token(p.model)
                runs.append(out | {"size": fair.name, "budget": round(b.tokens_per_param, 2), "params": b.params})
                runs[-1] |= {"flops_budget": flops, "target_layers": target, "reference_tokens_per_param": tpp}
                log(f"[{fair.name}] {key} seed {seed} {name}: test {out.get('final_val_loss')}")
        write(summary(fair, tuned, sizing, runs, cost, (before, started), len(val), len(test)), raw, partial=True)
    return summary(fair, tuned, sizing, runs, cost, (before, started), len(val), len(test))


def _short(by_depth: dict[int, float]) -> str:
    return ", ".join(f"{d}L {v:.3g}" for d, v in by_depth.items())


def _sittings(raw: Path) -> list[float]:
    """The seconds of the earlier sittings that wrote ``raw`` (a resumed run adds its own): each up to its last write
    of the file (a stop loses what it ran after that, and the rerun's cache hits cost it nothing)."""
    if not raw.exists():
        return []
    earlier = json.loads(raw.read_text())
    return earlier.get("sittings", [earlier["bench_seconds"]])


def summary(fair, tuned, sizing, runs, cost, clock: tuple[list[float], float], n_val, n_test) -> dict:
    sittings = [*clock[0], time.perf_counter() - clock[1]]
    return {
        "preset": fair.name,
        "command": "python -m bench.equal.fair_run --preset "
        + fair.name.removeprefix("fair-").replace("-tiny", " --tiny"),
        "sizes": {fair.name: fair.preset.model.model_dump()},  # the reference; each budget's target: right_sizing
        "tuning": {"seeds": fair.tuning_seeds, "by_budget": tuned, "arms": _flat(tuned)},
        "right_sizing": sizing,
        "estimated_seconds": cost,  # wall, at the load when it started
        "bench_seconds": sum(sittings),  # every sitting's, a stopped and resumed run's too
        "sittings": sittings,
        "runs": runs,
        "test_split": {"batches": n_test, "batch_size": fair.eval_batch, "val_batches": n_val},
        "ratio_resolution": ratio_resolution(fair),
        "report": report(fair, sizing),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": _device()},
    }


def report(fair: Fair, sizing: dict) -> dict:
    """bench.equal.report's setup: issue 28's goals at each budget's right-sized target (its own tokens/param)."""
    at = [sizing[k]["tokens_per_param"] for k in sizing]
    goals = [[t, "best staged schedule", *g] for t, g in zip(at, fair.goals)]
    first = [fair.name, at[0]] if at else None
    return {"held_out": first, "goals": goals, "curves": first}


def _flat(tuned: dict) -> dict:
    """The first budget's tuning per arm, as bench.equal.report reads it (every budget's is in by_budget)."""
    return next(iter(tuned.values()), {})


def _device() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def write(out: dict, raw: Path, partial: bool = False) -> Path:
    raw.with_suffix(".tmp").write_text(json.dumps(out | {"partial": partial}, indent=1) + "\n")
    raw.with_suffix(".tmp").replace(raw)
    return raw


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--tiny", action="store_true", help="the preset's machinery at toy sizes (seconds, CPU)")
    parser.add_argument("--workdir", default="/tmp/fair")
    parser.add_argument("--estimate", action="store_true", help="print the cost estimate and stop")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    fair = tiny(PRESETS[args.preset]) if args.tiny else PRESETS[args.preset]
    workdir = Path(args.workdir)
    raw = workdir / f"{fair.name}-raw.json"
    out = run(fair, workdir, raw, only_estimate=args.estimate)
    if not args.estimate:
        print(f"wrote {write(out, raw)}")


if __name__ == "__main__":
    main()
