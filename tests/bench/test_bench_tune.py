"""Equal tuning with Optuna (bench/suite/tune.py): seeded, stored in the workdir, resumable to the same trials.
A cheap, deterministic objective stands in for training: what is tested is the study's bookkeeping."""

from __future__ import annotations

import math

import pytest

from bench.suite.spec import HParams, Tuning
from bench.suite.tune import Tuned, study_name, tune

TUNING = Tuning(trials=6, seeds=[0], startup_trials=3)


def bowl(hp: HParams) -> tuple[float, dict]:
    """A smooth function of the hyperparameters with its minimum at lr 4e-3, warmup 0.1, wsd."""
    value = (math.log(hp.lr / 4e-3)) ** 2 + (hp.warmup - 0.1) ** 2 + (0.0 if hp.shape == "wsd" else 0.3)
    return value, {"echo": value}


def _points(t: Tuned) -> list[tuple]:
    return [(tr.number, tuple(tr.params.model_dump().values()), tr.value) for tr in t.trials]


def test_a_study_is_stored_in_the_workdir_and_reproduces_itself(tmp_path):
    a = tune("arm-x", tmp_path / "a", TUNING, bowl, log=lambda *_: None)
    b = tune("arm-x", tmp_path / "b", TUNING, bowl, log=lambda *_: None)
    assert (tmp_path / "a" / "optuna.db").is_file() and len(a.trials) == TUNING.trials
    assert _points(a) == _points(b)  # seeded: the same trials in a fresh workdir
    assert a.best.value == min(t.value for t in a.trials) and a.best.attrs == {"echo": a.best.value}
    assert a.as_dict()["trials"] == TUNING.trials and a.as_dict()["best_params"] == a.best.params.model_dump()


def test_an_interrupted_study_resumes_to_the_trials_of_an_uninterrupted_one(tmp_path):
    whole = tune("arm-x", tmp_path / "whole", TUNING, bowl, log=lambda *_: None)
    calls = []

    def dies_on_the_fourth(hp: HParams):
        calls.append(hp)
        if len(calls) == 4:
            raise KeyboardInterrupt  # the process is stopped mid-trial
        return bowl(hp)

    with pytest.raises(KeyboardInterrupt):
        tune("arm-x", tmp_path / "cut", TUNING, dies_on_the_fourth, log=lambda *_: None)
    ran = []
    resumed = tune("arm-x", tmp_path / "cut", TUNING, lambda hp: (ran.append(hp), bowl(hp))[1], log=lambda *_: None)
    assert len(ran) == TUNING.trials - 3  # only the missing trials ran again
    assert [t[1:] for t in _points(resumed)] == [t[1:] for t in _points(whole)]  # numbers differ by the failed one


def test_more_trials_extend_a_study_and_every_arm_starts_from_the_same_points(tmp_path):
    short = tune("arm-a", tmp_path, TUNING.model_copy(update={"trials": 2}), bowl, log=lambda *_: None)
    longer = tune("arm-a", tmp_path, TUNING, bowl, log=lambda *_: None)
    assert _points(longer)[:2] == _points(short)
    other = tune("arm-b", tmp_path, TUNING, lambda hp: (bowl(hp)[0] * 2, {}), log=lambda *_: None)
    startup = TUNING.startup_trials  # seeded random start-up: the same points for every arm
    assert [t.params for t in other.trials[:startup]] == [t.params for t in longer.trials[:startup]]


def test_study_names_change_with_what_the_objective_depends_on():
    assert study_name("best", {"budget": 2.0}) == study_name("best", {"budget": 2.0})
    assert study_name("best", {"budget": 2.0}) != study_name("best", {"budget": 8.0})
