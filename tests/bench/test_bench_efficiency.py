"""The throughput reference (bench/overhead/efficiency.py) is an independent bare loop: it shares nothing with
train() but torch and the model class, and its ratio comes with the spread over rounds."""

from __future__ import annotations

import dis
import json
import statistics
import types

import pytest
import torch

from bench.overhead import efficiency
from bench.overhead.efficiency import _note, bare_model, bare_step_seconds, throughput_and_mfu
from bench.suite.presets import PRESETS
from models.data.bytes import ByteCorpus
from models.families.lookup import FAMILIES, family_of


def _globals_used(fn) -> set[str]:
    """Module-level names a function (and the functions defined inside it) loads: LOAD_GLOBAL, not attributes."""
    names, todo = set(), [fn.__code__]
    while todo:
        code = todo.pop()
        names |= {i.argval for i in dis.get_instructions(code) if i.opname == "LOAD_GLOBAL"}
        todo += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    return names


def test_the_bare_loop_uses_only_torch_and_the_model():
    used = {n: vars(efficiency).get(n, n) for n in _globals_used(bare_step_seconds)}
    assert used["torch"] is torch and used["bare_model"] is bare_model and used["family_of"] is family_of
    allowed = {"torch", "F", "bare_model", "family_of", "contextlib", "time", "_sync", "range"}
    assert set(used) <= allowed, set(used) - allowed  # no train(), make_optimizer, token_loss, seeding helpers
    assert {"train", "seed_everything", "resolve_device"} <= set(vars(efficiency))  # ...which train()'s side uses
    assert _globals_used(bare_model) == {"family_of"}  # the model, as its family builds it: nothing else


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_the_bare_loop_runs_on_its_own_model(preset):
    seconds = bare_step_seconds(
        PRESETS[preset].model, torch.device("cpu"), batch=2, lr=1e-3, weight_decay=0.1, beta2=0.99, clip=1.0, steps=4
    )
    assert seconds > 0


def test_the_ratio_is_reported_per_round_with_its_spread():
    preset = PRESETS["tiny"]
    eff = throughput_and_mfu(preset, ByteCorpus(preset.data, preset.model.context, 1))
    rounds = eff["ratio_per_round"]
    assert len(rounds) == preset.throughput_rounds == len(eff["seconds_per_step"]["train"])
    assert eff["throughput_ratio_vs_bare_loop"] == statistics.median(rounds)
    assert eff["ratio_min"] <= eff["throughput_ratio_vs_bare_loop"] <= eff["ratio_max"]
    assert eff["train_tokens_per_s"] > 0 and eff["bare_tokens_per_s"] > 0 and 0 < eff["mfu"] and eff["note"]


def test_a_figure_above_one_is_explained():
    assert "noise" in _note([0.97, 1.02, 1.04])
    assert "every round above 1" in _note([1.02, 1.03, 1.05])
    assert "of the bare loop's speed" in _note([0.9, 0.95, 0.97])


def test_the_gpu_check_prints_tokens_per_s_mfu_and_the_ratio(capsys, tmp_path):
    from bench.gpu.check import main

    assert main(["--tiny", "--ratio", "--out", str(tmp_path / "g.json")]) == 0
    out = capsys.readouterr().out
    for what in ("matmul peak", "train():", "tokens/s, MFU", "bare loop:", "ratio train()/bare:"):
        assert what in out
    assert json.loads((tmp_path / "g.json").read_text())["throughput_ratio_vs_bare_loop"] > 0


def test_the_gpu_check_runs_every_family_through_a_grown_stage_on_cpu(capsys, tmp_path):
    """--tiny without compile (compile: tests/models/test_step.py): the script works before a GPU sees it."""
    from bench.gpu.check import main

    assert main(["--tiny", "--no-compile", "--out", str(tmp_path / "g.json")]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures == json.loads((tmp_path / "g.json").read_text())
    assert set(figures["families"]) == set(FAMILIES)
    for f in figures["families"].values():
        assert f["parity"] and f["recipe_tokens_per_s"] > 0 and 0 < f["recipe_mfu"] < 1
        assert f["recipe_peak_memory_bytes"] > 0 and abs(f["fp32_val_loss_init"] - f["recipe_val_loss_init"]) < 0.05


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the real check")
def test_the_gpu_check_without_a_gpu_is_one_line_and_exit_2(capsys):
    from bench.gpu.check import main

    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "no CUDA device" in err
