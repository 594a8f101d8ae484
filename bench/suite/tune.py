"""Equal tuning: every arm, scratch included, gets the same number of Optuna trials over the same declared
search space (bench.suite.spec.SearchSpace: peak LR, warmup, LR shape cosine | wsd, WSD's decay share), on the
tuning seeds only. What an arm minimises is its job in the comparison (bench/suite/protocol.py): scratch its
final validation loss (the strongest baseline at the budget), a schedule its FLOPs to reach that loss.

Each study lives in ``<workdir>/optuna.db`` (SQLite), named after the arm and a digest of everything its
objective depends on, so a rerun resumes it and runs only the missing trials, and a changed preset never
resumes a stale study. Trial k is proposed by a TPE sampler seeded with (sampler seed, k) from the k
completed trials before it: a resumed study proposes what an uninterrupted one would have, and a study
of n trials is the first n trials of a longer one. With the same seed every arm's random start-up
trials are the same points.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from bench.suite.spec import HParams, SearchSpace, Tuning

NOT_REACHED = 10.0  # + the loss gap: a trial that never reaches the target ranks below every trial that does
FAILED = 100.0  # the loss went NaN/Inf (too high an LR): the worst score, kept so the trial still counts

Objective = Callable[[HParams], tuple[float, dict]]  # hyperparameters -> (value to minimise, what to keep)


@dataclass(frozen=True)
class TrialResult:
    number: int
    params: HParams
    value: float
    attrs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Tuned:
    study: str
    trials: list[TrialResult]

    @property
    def best(self) -> TrialResult:
        return min(self.trials, key=lambda t: (t.value, t.number))

    def as_dict(self) -> dict:
        return {
            "study": self.study,
            "trials": len(self.trials),
            "best_params": self.best.params.model_dump(),
            "best_value": self.best.value,
            "all": [{"number": t.number, "value": t.value, **t.params.model_dump()} for t in self.trials],
        }


def storage_url(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'optuna.db').resolve()}"


def study_name(arm: str, identity: object) -> str:
    """``arm`` plus a digest of what its objective depends on (preset, budget, schedule, target...)."""
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return f"{arm}-{hashlib.sha256(blob).hexdigest()[:12]}"


def suggest(trial: optuna.Trial, space: SearchSpace) -> HParams:
    return HParams(
        lr=trial.suggest_float("lr", *space.lr, log=True),
        warmup=trial.suggest_float("warmup", *space.warmup),
        shape=trial.suggest_categorical("shape", list(space.shapes)),
        decay=trial.suggest_float("decay", *space.decay),
    )


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)


def tune(name: str, workdir: Path, tuning: Tuning, objective: Objective, log=print) -> Tuned:
    """Run study ``name`` up to ``tuning.trials`` completed trials (resuming it if it exists)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workdir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=name, storage=storage_url(workdir), direction="minimize", load_if_exists=True
    )
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        study.tell(stale.number, state=TrialState.FAIL)  # left behind by an interrupted run
    while (n := len(_complete(study))) < tuning.trials:
        study.sampler = optuna.samplers.TPESampler(
            seed=tuning.sampler_seed * 10_000 + n, n_startup_trials=tuning.startup_trials, multivariate=True
        )
        trial = study.ask()
        hp = suggest(trial, tuning.space)
        value, attrs = objective(hp)
        for key, v in attrs.items():
            trial.set_user_attr(key, v)
        study.tell(trial, value)
        log(f"[tune] {name} trial {n + 1}/{tuning.trials}: {value:.4f} at {_short(hp)}")
    done = _complete(study)[: tuning.trials]
    trials = [TrialResult(t.number, HParams(**t.params), float(t.value), dict(t.user_attrs)) for t in done]
    return Tuned(name, trials)


def _short(hp: HParams) -> str:
    decay = f" decay {hp.decay:.2f}" if hp.shape == "wsd" else ""
    return f"lr {hp.lr:.2e} warmup {hp.warmup:.2f} {hp.shape}{decay}"
