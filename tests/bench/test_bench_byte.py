"""The equal-compute driver on the byte GPT (bench/equal/byte.py through bench/equal/budgets.py): every arm
at scratch's FLOPs, the test split from the byte corpus's validation files, and the whole driver and report
end to end at a tiny size (seconds)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from bench.equal import budgets as llama_budgets
from bench.equal import report as llama_report
from bench.equal.byte import BYTE, SIZE
from bench.equal.study import arms, equalised, heldout_split
from bench.suite.presets import PRESETS
from bench.suite.spec import Tuning, train_flops_per_token
from models.data.bytes import ByteCorpus, DataConfig


def test_the_byte_setup_is_the_budgets_presets_model_at_equal_flops():
    p = llama_budgets.preset(SIZE, BYTE)
    assert p.model == PRESETS["budgets"].model and p.data == PRESETS["budgets"].data
    assert p.tokenizer.kind == "bytes" and BYTE.budgets[SIZE] == [0.5, 2.0, 8.0]
    every = arms(p.model.n_layers, 2.0)
    assert {"scratch", "small-1", "small-3", "small-6", "best", "gstack", "late-jump", "late-jump-mup"} == set(every)
    full = train_flops_per_token(p.model)
    for name, arm in every.items():
        eq = equalised(arm, p)
        spent = sum(
            s.share * train_flops_per_token(p.model.model_copy(update={"n_layers": s.n_layers})) for s in eq.stages
        )
        assert spent == pytest.approx(full, rel=1e-9), name


def test_the_byte_test_split_is_the_second_half_of_the_validation_files():
    corpus = ByteCorpus(DataConfig(max_bytes=3_000_000), context=16, seed=1)  # 11 validation files
    assert corpus.val_ends[-1] == len(corpus.val) and len(corpus.val_ends) > 1
    val, test = heldout_split(corpus, 2, 2, 4)
    assert len(val) == len(test) == 2 and val[0][0].shape == (4, 16)
    again = heldout_split(corpus, 2, 2, 4)
    assert all((a[0] == b[0]).all() for a, b in zip(test, again[1]))


def test_the_byte_driver_and_report_run_end_to_end(tmp_path):
    tiny = PRESETS["tiny"]
    setup = replace(
        BYTE,
        name="byte-tiny",
        sizes={SIZE: tiny.model},
        budgets={SIZE: [0.03]},
        data=DataConfig(max_bytes=3_000_000),  # tiny's 200 kB has one validation file: no test split
        batch_size=tiny.train.batch_size,
        tuning=Tuning(trials=1, seeds=[10], startup_trials=1),
        tune_at=(SIZE, 0.03),
        order=[(SIZE, 0.03)],
        heldout={(SIZE, 0.03): [1]},
        eval_batches=2,
        report={"held_out": [SIZE, 0.03], "goals": [[0.03, "best staged schedule", 0.5]], "curves": [SIZE, 0.03]},
    )
    raw = tmp_path / "raw.json"
    out = llama_budgets.run(tmp_path / "work", raw, log=lambda m: None, setup=setup)
    assert {(r["budget"], r["seed"]) for r in out["runs"]} == {(0.03, 1)} and len(out["runs"]) == 8
    assert all(r["final_val_loss"] is not None for r in out["runs"])
    again = llama_budgets.run(tmp_path / "work", raw, log=lambda m: None, setup=setup)  # resumed from the cache
    assert [r["final_val_loss"] for r in again["runs"]] == [r["final_val_loss"] for r in out["runs"]]
    s = llama_report.summarise(json.loads(json.dumps(llama_budgets.write(out, raw) and out)))
    assert [g["tokens_per_param"] for g in s["goals"]] == [0.03]
    assert "| b (" in llama_report.markdown(s)
    llama_report.plot(s, out, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 0
