"""One budget of the protocol: every arm tuned alike on the tuning seeds, then measured on held-out seeds.

    1. scratch: ``tuning.trials`` Optuna trials on the tuning seeds, minimising the mean final val loss
       (the strongest baseline at this budget: its loss is the target, the harder the better);
    2. each schedule: as many trials over the same search space on the same seeds, minimising its mean
       FLOPs to reach the tuned scratch's final loss on that seed (bench/suite/tune.py: NOT_REACHED + the gap
       when it never gets there);
    3. the held-out seeds, never tuned on: scratch with its best trial's hyperparameters sets each seed's
       target, each schedule runs with its own best trial's and stops there. Only these runs are reported.

Every run is deterministic on CPU (FLOPs and losses; wall time is not), so a rerun reproduces the figures.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.suite.figures import best_schedule, scratch_rows, seed_row, summarise
from bench.suite.runner import Corpus, run_arm
from bench.suite.schedules import resolve
from bench.suite.spec import Budget, HParams, Preset, Schedule, budget, scratch_schedule
from bench.suite.tune import FAILED, NOT_REACHED, Tuned, study_name, tune
from tasks.driver import StageFailed


def _identity(preset: Preset, b: Budget, schedule: Schedule, extra: object = None) -> dict:
    """What a study's objective depends on: a change in any of it starts a new study."""
    keep = preset.model_dump(
        include={"model", "data", "tokenizer", "train", "evals_per_run", "eval_batches", "eval_batch_size"}
    )
    tuning = preset.tuning.model_dump(exclude={"trials"})  # more trials extend a study, they do not replace it
    return {**keep, "tuning": tuning, "budget": b.tokens_per_param, "schedule": schedule.model_dump(), "extra": extra}


def _failed(name: str, seed: int, e: StageFailed) -> dict:
    """A held-out run whose loss went NaN/Inf: it never reaches the target (reported, never dropped)."""
    return {"schedule": name, "seed": seed, "failed": str(e), "final_val_loss": None, "points": [], "boundaries": []}


def tune_scratch(preset: Preset, b: Budget, corpora: dict[int, Corpus], workdir: Path, log) -> Tuned:
    scratch = scratch_schedule(preset)

    def objective(hp: HParams) -> tuple[float, dict]:
        finals, curves = [], []
        for seed in preset.tuning.seeds:
            try:
                arm = run_arm(preset, scratch, corpora[seed], seed, hp, b).as_dict()
            except StageFailed as e:
                return FAILED, {"failed": str(e)}
            finals.append(arm["final_val_loss"])
            curves.append(arm["points"])
        return statistics.fmean(finals), {"final": finals, "points": curves}

    return tune(study_name("scratch", _identity(preset, b, scratch)), workdir, preset.tuning, objective, log)


def tune_schedule(
    preset: Preset, b: Budget, schedule: Schedule, scratch: Tuned, corpora: dict[int, Corpus], workdir: Path, log
) -> Tuned:
    best = scratch.best.attrs
    targets = [{"final_val_loss": f, "points": p} for f, p in zip(best["final"], best["points"])]

    def objective(hp: HParams) -> tuple[float, dict]:
        ratios, gaps = [], []
        for seed, target in zip(preset.tuning.seeds, targets):
            stop = target["final_val_loss"]
            try:
                arm = run_arm(preset, schedule, corpora[seed], seed, hp, b, stop_below=stop).as_dict()
            except StageFailed as e:
                return FAILED, {"failed": str(e)}
            ratios.append(seed_row(target, arm)["flops_ratio"])
            gaps.append(max(0.0, arm["final_val_loss"] - stop))
        if None in ratios:
            return NOT_REACHED + statistics.fmean(gaps), {"flops_ratio": ratios}
        return statistics.fmean(ratios), {"flops_ratio": ratios}

    identity = _identity(preset, b, schedule, extra=best["final"])
    return tune(study_name(schedule.name, identity), workdir, preset.tuning, objective, log)


def run_budget(
    preset: Preset, tokens_per_param: float, corpora: dict[int, Corpus], workdir: Path, log
) -> tuple[dict, list[dict]]:
    """Tune, then measure on the held-out seeds: (this budget's figures, the held-out arms' raw curves)."""
    b = budget(preset, tokens_per_param)
    log(f"[bench] budget {tokens_per_param:g} tokens/param: {b.scratch_steps} scratch steps, {b.tokens} tokens")
    scratch = scratch_schedule(preset)
    scratch_tuned = tune_scratch(preset, b, corpora, workdir, log)
    schedules = {name: resolve(name, tokens_per_param) for name in preset.schedules}
    tuned = {name: tune_schedule(preset, b, s, scratch_tuned, corpora, workdir, log) for name, s in schedules.items()}
    arms: list[dict] = []
    for seed in preset.heldout_seeds:
        base = run_arm(preset, scratch, corpora[seed], seed, scratch_tuned.best.params, b).as_dict()
        arms.append(base | {"budget": tokens_per_param})
        log(f"[bench] held-out seed {seed} scratch: val {base['final_val_loss']:.4f} in {base['train_seconds']:.1f}s")
        for name, schedule in schedules.items():
            hp, stop = tuned[name].best.params, base["final_val_loss"]
            try:
                arm = run_arm(preset, schedule, corpora[seed], seed, hp, b, stop_below=stop).as_dict()
            except StageFailed as e:
                arm = _failed(name, seed, e)
            arms.append(arm | {"budget": tokens_per_param})
            reached = "target reached" if arm.get("stopped_at_target") else "target NOT reached"
            log(f"[bench] held-out seed {seed} {name}: {reached}")
    figures = summarise(arms)
    out = {
        "tokens_per_param": tokens_per_param,
        "params": b.params,
        "tokens": b.tokens,
        "scratch_steps": b.scratch_steps,
        "eval_every": b.eval_every,
        "scratch": {
            "trials": len(scratch_tuned.trials),
            "best_params": scratch_tuned.best.params.model_dump(),
            "per_seed": scratch_rows([a for a in arms if a["schedule"] == "scratch"]),
            "tuning": scratch_tuned.as_dict(),
        },
        "schedules": {
            name: {
                **figures[name],
                "trials": len(tuned[name].trials),
                "best_params": tuned[name].best.params.model_dump(),
                "note": schedules[name].note,
                "stages": [p.model_dump(exclude_defaults=True) for p in schedules[name].stages],
                "tuning": tuned[name].as_dict(),
            }
            for name in schedules
        },
    }
    return out | {"best_schedule": best_schedule(out["schedules"])}, arms
