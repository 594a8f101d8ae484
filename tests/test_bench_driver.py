"""One driver: a benchmark arm trains through the very code the Prefect stage task runs (tasks/driver.py),
seeded alike, so it ends with the weights the pipeline registers for the same spec, bit for bit."""

from __future__ import annotations

import pytest

from bench.presets import PRESETS
from bench.runner import run_arm
from bench.schedules import resolve
from bench.spec import HParams, budget, pipeline_config
from models.data import ByteCorpus
from tasks.store import save_model

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", ["best", "plain"])  # identity + moments carried + one LR curve; stack + fresh AdamW
def test_a_bench_arm_ends_with_the_weights_the_flow_registers(name, prefect_harness, workdir, tmp_path):
    from flows.staged import staged_training

    preset = PRESETS["tiny"]
    b, schedule = budget(preset, preset.budgets[0]), resolve(name, preset.budgets[0])
    hp = HParams(lr=5e-3, warmup=0.1, shape="wsd", decay=0.3)
    arm = run_arm(preset, schedule, ByteCorpus(preset.data, preset.model.context, 1), 1, hp, b)
    bench_sha = save_model(arm.model, tmp_path / "arm")
    results = staged_training(pipeline_config(preset, schedule, 1, f"bench-{name}", hp, b.scratch_steps), str(workdir))
    assert [r.ref.n_layers for r in results] == [s.n_layers for s in schedule.stages]
    assert results[-1].ref.weights_sha256 == bench_sha
