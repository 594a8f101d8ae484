"""The equal-compute protocol (issue 23): every arm gets scratch's FLOPs budget, tuning sees only the
validation split, the headline only the test split.

    arms(depth, tpp)            scratch, small-from-scratch baselines and the staged schedules, depth-scaled
    equalised(arm, model)       the arm with its stage lengths set so that it spends exactly scratch's FLOPs
    heldout_split(corpus, ...)  (validation batches, test batches): documents disjoint, the same for every seed
    tune_arm / heldout_arm      one arm tuned on the tuning seeds (final validation loss), one held-out run
    Setup                       one benchmark's model per size, data, tokenizer, budgets and seeds (the driver:
                                bench/equal/budgets.py; the setups: its LLAMA, bench/equal/byte.py's BYTE)

FLOPs are the family's one count (models/families/family.py ``flops_per_token``: 6 x matmul weights + attention),
the same the curves are drawn in. An arm is stopped by its FLOPs budget only, never at a target: the
headline (bench/equal/law.py) reads from each held-out curve the FLOPs at which it first reaches scratch's
final *test* loss (or "not reached") and its final test loss at equal FLOPs.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bench.suite.runner import Corpus, run_arm
from bench.suite.schedules import GSTACK_TOKENS_PER_PARAM, SCHEDULES
from bench.suite.spec import ArmStage, Budget, HParams, Preset, Schedule, Tuning, train_flops_per_token
from bench.suite.tune import FAILED, Tuned, study_name, tune
from models.data.bytes import DataConfig
from models.data.tokenizer import TokenizerConfig
from models.families.lookup import ModelConfig
from models.train.loop import evaluate
from tasks.driver import StageFailed

STAGED = ["best", "gstack", "late-jump", "late-jump-mup"]  # plain and midas: see docs/benchmarks.md (CPU time)
MUP_JUMP = 0.8  # the μP arm jumps after this share of its own steps (Bu 2025)


@dataclass(frozen=True)
class Setup:
    """One equal-compute benchmark: the model per size, the data and tokenizer, the budgets and seeds."""

    name: str
    sizes: dict[str, ModelConfig]
    budgets: dict[str, list[float]]
    data: DataConfig
    tokenizer: TokenizerConfig
    batch_size: int
    tuning: Tuning
    tune_at: tuple[str, float]  # (size, tokens/param) of the one tuning round, reused everywhere
    order: list[tuple[str, float]]  # the held-out points, in the order they run
    heldout: dict[tuple[str, float], list[int]] = field(default_factory=dict)  # else [1, 2]
    eval_batches: int = 16  # of 8 sequences, per validation (tuning) and test (headline) evaluation
    # for bench/equal/report.py: the law's held-out point, the goals [(tokens/param, what, at most)], the curves
    report: dict = field(default_factory=dict)

    @property
    def mup_tuning(self) -> Tuning:  # the μP arm: WSD only, as Bu 2025
        return self.tuning.model_copy(update={"space": self.tuning.space.model_copy(update={"shapes": ("wsd",)})})


def _depth(n: int, depth: int) -> int:
    return max(1, round(n * depth / 12))


def _scaled(s: Schedule, depth: int) -> Schedule:
    """A 12-layer schedule at another final depth: every stage's layers x depth / 12 (3->6->12 is 2->4->8 at 8)."""
    stages = [st.model_copy(update={"n_layers": _depth(st.n_layers, depth)}) for st in s.stages]
    return s.model_copy(update={"stages": stages})


def baselines(depth: int) -> list[int]:
    """The small-from-scratch depths beside a ``depth``-layer target: 1, depth/4, depth/2 (1, 3, 6 at 12)."""
    return sorted({1, _depth(3, depth), _depth(6, depth)} - {depth})


def mup_late_jump(depth: int) -> Schedule:
    """Bu 2025's one late jump under WSD with μP-style depth scaling: 1 layer for 80% of the arm's steps,
    then ``depth`` layers; the new layers start as identities (zeroed output projections: μP's zero init of
    the readouts) and the post-jump peak LR is the trial's x sqrt(1 / depth) (depth-μP's Adam rule)."""
    return Schedule(
        name="late-jump-mup",
        stages=[
            ArmStage(n_layers=1, share=MUP_JUMP, schedule="continue"),
            ArmStage(
                n_layers=depth,
                share=1 - MUP_JUMP,
                growth="identity",
                optimizer="transfer",
                schedule="continue",
                lr_scale=math.sqrt(1 / depth),
            ),
        ],
        note=f"1 -> {depth} at {MUP_JUMP:.0%} of its steps, WSD only, new layers zero-out, post-jump LR x 1/sqrt(L)",
    )


def arms(depth: int, tokens_per_param: float) -> dict[str, Schedule]:
    """Every arm at a budget, before equalising: scratch, the small baselines, the staged schedules."""
    out = {"scratch": Schedule(name="scratch", stages=[ArmStage(n_layers=depth, share=1.0)], note="the target")}
    for n in baselines(depth):
        out[f"small-{n}"] = Schedule(name=f"small-{n}", stages=[ArmStage(n_layers=n, share=1.0)], note="from scratch")
    for name in STAGED:
        if name == "late-jump-mup":
            out[name] = mup_late_jump(depth)
            continue
        s = _scaled(SCHEDULES[name], depth)
        if name == "gstack":  # their growth point, transferred in tokens per target parameter, at most half
            share = min(0.5, GSTACK_TOKENS_PER_PARAM / tokens_per_param)
            st = s.stages
            s = s.model_copy(update={"stages": [st[0].model_copy(update={"share": share}), st[1]]})
        out[name] = s
    return out


def equalised(arm: Schedule, preset: Preset) -> Schedule:
    """``arm`` with stage shares that spend exactly scratch's FLOPs (shares are of scratch's steps).

    The μP arm scales every stage alike (its jump stays at 80% of its own steps); every other arm keeps
    its growth points and its last stage runs on until the budget is spent."""
    f = [train_flops_per_token(preset.model.model_copy(update={"n_layers": st.n_layers})) for st in arm.stages]
    full = train_flops_per_token(preset.model)
    if arm.name == "late-jump-mup":
        k = full / sum(st.share * fi for st, fi in zip(arm.stages, f))
        stages = [st.model_copy(update={"share": st.share * k}) for st in arm.stages]
    else:
        spent = sum(st.share * fi for st, fi in zip(arm.stages[:-1], f[:-1]))
        last = arm.stages[-1].model_copy(update={"share": (full - spent) / f[-1]})
        stages = [*arm.stages[:-1], last]
    return arm.model_copy(update={"stages": stages})


def _document_ends(corpus: Corpus) -> tuple[np.ndarray, int]:
    """(where each validation document ends, the val stream's length): the byte corpus's validation files, or a
    token stream's end-of-text tokens."""
    if (ends := getattr(corpus, "val_ends", None)) is not None:
        return np.asarray(ends), len(corpus.val)
    eos = corpus.manifest.eos_id
    if eos is None:
        raise ValueError("the test split needs data.eos_token: documents must be delimited in the token stream")
    stream = corpus.val.rows([0], len(corpus.val))[0]
    return np.flatnonzero(stream == eos) + 1, len(stream)


def heldout_split(corpus: Corpus, n_val: int, n_test: int, batch_size: int) -> tuple[list, list]:
    """(validation, test): the validation documents cut in two at the document boundary nearest the middle,
    the first half for tuning, the second for the headline; fixed batches spread over each, the same for every
    seed (no permutation). A token stream needs ``data.eos_token`` (a document boundary in it); the byte
    corpus's documents are its validation files."""
    ends, length = _document_ends(corpus)
    cut = int(ends[np.argmin(np.abs(ends - length / 2))])
    width = corpus.context + 1

    def batches(lo: int, hi: int, n: int) -> list:
        chunks = (hi - lo) // width
        if chunks < n * batch_size:
            raise ValueError(f"{chunks} chunks of {width} tokens in [{lo}, {hi}): fewer than {n} x {batch_size}")
        stride = chunks // (n * batch_size)
        starts = [lo + i * stride * width for i in range(n * batch_size)]
        return [corpus._chunks(corpus.val, starts[b * batch_size : (b + 1) * batch_size]) for b in range(n)]

    return batches(0, cut, n_val), batches(cut, length, n_test)


def _cached(path: Path, run) -> dict:
    """A held-out arm's result from ``path`` if an earlier (interrupted) run wrote it, else run and write it."""
    if path.is_file():
        return json.loads(path.read_text())
    out = run()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(out))
    path.with_suffix(".tmp").replace(path)
    return out


def tune_arm(
    preset: Preset, name: str, arm: Schedule, b: Budget, corpora: dict, val: list, tuning: Tuning, workdir: Path, log
) -> Tuned:
    """Trials minimising the mean final *validation* loss over the tuning seeds at the budget (every arm alike)."""
    quiet = replace(b, eval_every=10**9)  # evals at stage boundaries and the end only

    def objective(hp: HParams) -> tuple[float, dict]:
        finals = []
        for seed in tuning.seeds:
            try:
                finals.append(run_arm(preset, arm, corpora[seed], seed, hp, quiet, eval_set=val).final_val_loss)
            except StageFailed as e:
                return FAILED, {"failed": str(e)}
        if not all(math.isfinite(x) for x in finals):
            return FAILED, {"final": finals}
        return statistics.fmean(finals), {"final": finals}

    identity = {"preset": preset.model_dump(), "budget": b.tokens_per_param, "arm": arm.model_dump(), "v": 23}
    return tune(study_name(name, identity), workdir, tuning, objective, log)


def heldout_arm(
    preset: Preset, arm: Schedule, b: Budget, corpus: Corpus, seed: int, hp: HParams, split: tuple, path: Path
) -> dict:
    """One held-out run, the whole FLOPs budget, cached at ``path`` (resumable). ``split`` = (validation, test):
    its curve is on the test split (the headline's only data); its final model is also evaluated once on the
    validation half (``final_val_split_loss``), the only figure the best schedule is chosen by."""
    val, test = split

    def run() -> dict:
        try:
            done = run_arm(preset, arm, corpus, seed, hp, b, eval_set=test)
            out = done.as_dict() | {"final_val_split_loss": evaluate(done.model, val)}
        except StageFailed as e:
            out = {"schedule": arm.name, "seed": seed, "failed": str(e), "final_val_loss": None, "points": []}
        out.pop("model", None)
        return out | {"budget": b.tokens_per_param, "stages": [s.model_dump(exclude_defaults=True) for s in arm.stages]}

    return _cached(path, run)
