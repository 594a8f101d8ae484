"""The equal-compute driver (bench/equal/study.py), one :class:`Setup` a model, data and tokenizer: ``llama``
(this module's, ``llama-budgets``: a tiny Llama + BPE at two sizes and ~5, 20 and 80 tokens per parameter) or
``gpt`` (bench/equal/byte.py: the ``budgets`` preset's byte GPT), each sized for one shared CPU core.

    python -m bench.equal.budgets [--model llama|gpt] --workdir /tmp/bench-e [--estimate]

1. The corpus (the standard library's .py text, one document per file, <|endoftext|> between documents)
   is read, the BPE trained on the training split and the shards hashed once; validation and test are the
   two halves of the validation documents (bench.equal.study.heldout_split).
2. Tuning, once, at ``Setup.tune_at`` (llama: the small size's smallest budget): every arm the same trials
   on the same three tuning seeds, minimising the mean final validation loss. Each arm's best trial is
   reused at every budget and size (CPU time; docs/benchmarks.md says so).
3. Every arm on the held-out seeds at every (size, budget) with scratch's FLOPs, evaluated on the test split.
   Each run is cached under ``<workdir>/arms/`` and every study in ``<workdir>/optuna.db``: a rerun resumes.
4. The figures, the fits and the law (bench/equal/law.py) into ``--out`` and its figure beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from bench.equal.study import Setup, arms, equalised, heldout_arm, heldout_split, tune_arm
from bench.suite.runner import open_corpora
from bench.suite.spec import HParams, Preset, Tuning, budget, n_params, pipeline_config, train_flops_per_token
from models.data.bytes import DataConfig
from models.data.tokenizer import EOT, TokenizerConfig, TrainTokenizer
from models.families.llama import LlamaFamilyConfig
from models.train.loop import TrainConfig

VOCAB = 320  # 256 bytes + <|endoftext|> + 63 merges: the embeddings stay a minority of the parameters
DEPTH = 8
SIZES = {  # d_model -> (query heads, d_ff): 8 layers each, one key-value head
    "s": LlamaFamilyConfig(
        arch="llama", n_layers=DEPTH, d_model=16, n_heads=2, n_kv_heads=1, d_ff=32, context=64, vocab_size=VOCAB
    ),
    "l": LlamaFamilyConfig(
        arch="llama", n_layers=DEPTH, d_model=24, n_heads=2, n_kv_heads=1, d_ff=48, context=64, vocab_size=VOCAB
    ),
}
BUDGETS = {"s": [5.0, 20.0, 80.0], "l": [5.0, 20.0]}  # the large size's 80 would cost more than the rest together
HELDOUT = {("s", 80.0): [1]}  # one held-out seed at the costliest point (CPU time); [1, 2] elsewhere
TUNING = Tuning(trials=2, seeds=[10, 11, 12], startup_trials=2)
DATA = DataConfig(format="text", encoding_errors="replace", eos_token=EOT, max_bytes=12_000_000)


LLAMA = Setup(
    name="llama-budgets",
    sizes=SIZES,
    budgets=BUDGETS,
    data=DATA,
    tokenizer=TokenizerConfig(train=TrainTokenizer(vocab_size=VOCAB)),
    batch_size=32,
    tuning=TUNING,
    tune_at=("s", 5.0),
    order=[("s", 20.0), ("l", 20.0), ("s", 5.0), ("l", 5.0), ("s", 80.0)],  # the users' regime first
    heldout=HELDOUT,
    report={
        "held_out": ["l", 20.0],
        "goals": [[20.0, "best staged schedule", 0.50], [20.0, "late-jump-mup", 0.35]],
        "curves": ["s", 20.0],
    },
)


def preset(size: str, setup: Setup = LLAMA) -> Preset:
    return Preset(
        name=f"{setup.name}-{size}",
        model=setup.sizes[size],
        data=setup.data,
        tokenizer=setup.tokenizer,
        train=TrainConfig(batch_size=setup.batch_size),
        budgets=setup.budgets[size],
        tuning=setup.tuning,
        heldout_seeds=[1, 2],
        schedules=["best"],
        evals_per_run=16,
        eval_batches=setup.eval_batches,
        eval_batch_size=8,
    )


def planned_config(model, arm: str, tokens: int, hparams: dict):
    """`staged plan --out`: the pipeline config of ``arm`` (a name of ``arms``) for ``model`` on ``tokens`` tokens,
    with that arm's tuned hyperparameters, equalised to scratch's FLOPs like the benchmark's runs."""
    p = preset("s").model_copy(update={"model": model})
    scratch_steps = max(2, round(tokens / (p.train.batch_size * model.context)))
    schedule = equalised(arms(model.n_layers, tokens / n_params(model))[arm], p)
    return pipeline_config(p, schedule, 0, "staged-plan", HParams(**hparams), scratch_steps)


def seeds(size: str, tpp: float, setup: Setup = LLAMA) -> list[int]:
    return setup.heldout.get((size, tpp), [1, 2])


def estimate(step_seconds: dict[str, float], setup: Setup = LLAMA) -> float:
    """Seconds the whole run needs at the measured seconds per full-depth step, arms as long as scratch."""
    total = 0.0
    for size, tpps in setup.budgets.items():
        p = preset(size, setup)
        n_arms = len(arms(p.model.n_layers, 1.0))
        for tpp in tpps:
            total += budget(p, tpp).scratch_steps * step_seconds[size] * n_arms * len(seeds(size, tpp, setup))
    size, tpp = setup.tune_at
    p = preset(size, setup)
    tuning = budget(p, tpp).scratch_steps * step_seconds[size] * len(arms(p.model.n_layers, 1.0))
    return total + tuning * setup.tuning.trials * len(setup.tuning.seeds)


def _step_seconds(p: Preset, corpus) -> float:
    from models.families.lookup import family_of

    model = family_of(p.model).build(p.model)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x, y = corpus.batch(0, p.train.batch_size)
    from models.families.family import token_loss

    times = []
    for _ in range(6):
        t = time.perf_counter()
        loss = token_loss(family_of(model).logits(model, x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def _log(msg: str) -> None:
    print(msg, flush=True)


def run(workdir: Path, raw: Path, log=_log, only_estimate: bool = False, setup: Setup = LLAMA) -> dict:
    started = time.perf_counter()
    presets = {size: preset(size, setup) for size in setup.sizes}
    first = presets[next(iter(setup.sizes))]
    all_seeds = list(dict.fromkeys([*setup.tuning.seeds, *(s for k in setup.order for s in seeds(*k, setup))]))
    corpora = open_corpora(first, all_seeds, workdir)  # the same data and tokenizer for every size
    val, test = heldout_split(corpora[all_seeds[-1]], first.eval_batches, first.eval_batches, 8)
    steps = {size: _step_seconds(p, corpora[all_seeds[-1]]) for size, p in presets.items()}
    cost = estimate(steps, setup)
    tag = f"[{setup.name}]"
    log(f"{tag} estimated cost: {cost / 60:.0f} min on this core ({steps} s per full step)")
    if only_estimate:
        return {"estimated_seconds": cost}
    ps = presets[setup.tune_at[0]]
    b0 = budget(ps, setup.tune_at[1])
    tuned = {}
    for name, arm in arms(ps.model.n_layers, b0.tokens_per_param).items():
        tuning = setup.mup_tuning if name == "late-jump-mup" else setup.tuning
        t = tune_arm(ps, name, equalised(arm, ps), b0, corpora, val, tuning, workdir, log)
        start = t.trials[0].value
        tuned[name] = t.as_dict() | {"beat_start": sum(tr.value < start for tr in t.trials[1:])}
    runs: list[dict] = []

    def summary() -> dict:
        return {
            "preset": setup.name,
            "sizes": {k: v.model_dump() for k, v in setup.sizes.items()},
            "budgets_by_size": setup.budgets,
            "tuning": {
                "seeds": setup.tuning.seeds,
                "trials_per_arm": setup.tuning.trials,
                "at": [setup.tune_at[0], b0.tokens_per_param],
                "arms": tuned,
            },
            "estimated_seconds": cost,
            "bench_seconds": time.perf_counter() - started,
            "runs": runs,
            "test_split": {"batches": len(test), "batch_size": 8, "val_batches": len(val)},
            "report": setup.report,
            "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        }

    for size, tpp in setup.order:
        p, b = presets[size], budget(presets[size], tpp)
        for seed in seeds(size, tpp, setup):
            for name, arm in arms(p.model.n_layers, tpp).items():
                hp = HParams(**tuned[name]["best_params"])
                path = workdir / "arms" / f"{size}-{tpp:g}-{seed}-{name}.json"
                out = heldout_arm(p, equalised(arm, p), b, corpora[seed], seed, hp, (val, test), path)
                flops = b.tokens * train_flops_per_token(p.model)
                runs.append(out | {"size": size, "params": b.params, "flops_budget": flops})
                log(f"{tag} {size} {tpp:g} tpp seed {seed} {name}: test {out.get('final_val_loss')}")
        write(summary(), raw, partial=True)  # a report can be made from the points done so far
    return summary()


def write(out: dict, raw: Path, partial: bool = False) -> Path:
    raw.write_text(json.dumps(out | {"partial": partial}, indent=1) + "\n")
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["llama", "gpt"], default="llama", help="gpt: bench/equal/byte.py")
    parser.add_argument("--workdir", default="/tmp/bench-e")
    parser.add_argument("--raw", default=None, help="where the raw runs go (default <workdir>/<name>-raw.json)")
    parser.add_argument("--estimate", action="store_true", help="print the cost estimate and stop")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.model == "gpt":
        from bench.equal.byte import BYTE as setup
    else:
        setup = LLAMA
    workdir = Path(args.workdir)
    raw = Path(args.raw) if args.raw else workdir / f"{setup.name}-raw.json"
    print(f"wrote {write(run(workdir, raw, only_estimate=args.estimate, setup=setup), raw)}")


if __name__ == "__main__":
    main()
