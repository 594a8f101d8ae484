"""One driver: a benchmark arm trains through the very code the Prefect stage task runs (tasks/driver.py),
seeded alike, so it ends with the weights the pipeline registers for the same spec, bit for bit."""

from __future__ import annotations

import pytest

from bench.suite.presets import PRESETS
from bench.suite.runner import open_corpora, run_arm
from bench.suite.schedules import resolve
from bench.suite.spec import HParams, budget, pipeline_config
from tasks.store import save_model

pytestmark = pytest.mark.integration


# identity + moments carried + one LR curve; stack + fresh AdamW; and a Llama on the bench's own BPE and token
# shards against the flow, which trains its tokenizer and builds its shards itself in its own workspace
@pytest.mark.parametrize(("preset_name", "name"), [("tiny", "best"), ("tiny", "plain"), ("tiny-llama", "best")])
def test_a_bench_arm_ends_with_the_weights_the_flow_registers(preset_name, name, prefect_harness, workdir, tmp_path):
    from flows.staged import staged_training

    preset = PRESETS[preset_name]
    b, schedule = budget(preset, preset.budgets[0]), resolve(name, preset.budgets[0])
    hp = HParams(lr=5e-3, warmup=0.1, shape="wsd", decay=0.3)
    arm = run_arm(preset, schedule, open_corpora(preset, [1], tmp_path / "bench")[1], 1, hp, b)
    bench_sha = save_model(arm.model, tmp_path / "arm")
    results = staged_training(pipeline_config(preset, schedule, 1, f"bench-{name}", hp, b.scratch_steps), str(workdir))
    assert [r.ref.n_layers for r in results] == [s.n_layers for s in schedule.stages]
    assert results[-1].ref.weights_sha256 == bench_sha
