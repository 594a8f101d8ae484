"""The equal-compute protocol (bench/equal/study.py, driven by bench/equal/budgets.py) on the ``budgets`` preset's
byte GPT: 12 layers at d_model 24, the byte vocabulary (no BPE), the standard library's bytes (3 MB, split by
file; the test split's documents are the validation files), at 0.5, 2 and 8 tokens per parameter.

    python -m bench.equal.budgets --model gpt --workdir /tmp/bench-byte [--estimate]
    python -m bench.equal.report /tmp/bench-byte/byte-budgets-raw.json --out docs/byte-budgets.json
"""

from __future__ import annotations

from bench.equal.study import Setup
from bench.suite.presets import PRESETS
from bench.suite.spec import Tuning
from models.data.tokenizer import TokenizerConfig

_BUDGETS = PRESETS["budgets"]
SIZE = "b"  # the one size: the budgets preset's model (100,560 parameters)
TPPS = list(_BUDGETS.budgets)  # 0.5, 2, 8

BYTE = Setup(
    name="byte-budgets",
    sizes={SIZE: _BUDGETS.model},
    budgets={SIZE: TPPS},
    data=_BUDGETS.data,
    tokenizer=TokenizerConfig(),  # the byte vocabulary
    batch_size=_BUDGETS.train.batch_size,
    tuning=Tuning(trials=2, seeds=[10, 11, 12], startup_trials=2),
    tune_at=(SIZE, 2.0),  # the middle budget: 0.5 (49 steps) is too short to pick an LR for 8
    order=[(SIZE, 2.0), (SIZE, 8.0), (SIZE, 0.5)],
    heldout={},  # held-out seeds 1, 2 at every budget
    report={
        "held_out": [SIZE, 2.0],
        # the budgets preset's goals (docs/benchmarks.md, "Earlier protocol"), now at equal FLOPs on the test split
        "goals": [[0.5, "best staged schedule", 0.35], [8.0, "best staged schedule", 0.50]],
        "curves": [SIZE, 8.0],
    },
)
