"""Train one arm (scratch or a staged schedule, with one trial's hyperparameters, at one budget) through
the stage driver the Prefect task runs (tasks/driver.py), recording validation loss against training
wall time, tokens and FLOPs.

An arm is a PipelineConfig (bench.suite.spec.pipeline_config); each of its StageSpecs is prepared (built
or grown) and trained by the driver with the very seeding of a pipeline stage. The parent of each
stage is the previous stage's model, handed over in memory instead of through the registry: a test
(tests/bench/test_bench_driver.py) shows an arm ends with the weights the Prefect flow registers, bit for bit.

Clock: runs while the driver prepares a stage (build, growth of weights and Adam moments) and
inside train(), minus the step hook's own time (the benchmark's evaluations, on the same fixed
validation batches for every arm). train()'s own one-batch evals at the start and end of each stage
stay inside the clock; that costs under one step per stage.

Corpora (open_corpora): one per seed, opened by the pipeline's own ``open_corpus``: raw bytes, or, for a
document format, the token shards the pipeline builds, cached under ``<workdir>/cache``, with the preset's
tokenizer resolved once (``driver.resolve_tokenizer``: a BPE trained on the training split only) and
shared by every arm and seed, so every arm reads the very same token stream.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bench.suite.curves import Point
from bench.suite.spec import Budget, HParams, Preset, Schedule, pipeline_config, scratch_schedule, train_flops_per_token
from models.data.bytes import ByteCorpus
from models.data.corpus import open_corpus
from models.data.shards import TokenCorpus
from models.train.loop import evaluate, resolve_device
from models.train.plan import Hooks, StepInfo
from tasks import driver

Corpus = ByteCorpus | TokenCorpus


def open_corpora(preset: Preset, seeds: Iterable[int], workdir: Path) -> dict[int, Corpus]:
    """Each seed's corpus, as a pipeline stage of the preset opens it (token shards under ``workdir/cache``).

    The corpus is read, tokenized and its shards hashed once per call; each further seed is the same
    streams with its own permutation (a copy, nothing reread)."""
    cache = workdir / "cache"
    spec = pipeline_config(preset, scratch_schedule(preset), 0, "bench-corpus", preset.defaults, 2).stage_specs()[0]
    vocabulary = driver.resolve_tokenizer(spec, cache)  # the byte vocabulary, a file, or a BPE trained once here
    seeds = list(dict.fromkeys(seeds))
    first = open_corpus(preset.data, preset.model.context, seeds[0], vocabulary, cache, progress=False)
    return {seed: first if seed == seeds[0] else reseeded(first, seed) for seed in seeds}


def reseeded(corpus: Corpus, seed: int) -> Corpus:
    """The same train and validation streams, walked in ``seed``'s order."""
    out = copy.copy(corpus)
    out.seed, out._perm_epoch = seed, -1
    return out


class _Reached(Exception):
    """Raised from the step hook to stop an arm once the target is reached: the rest of the
    curve cannot change its time-to-target, and the machine is shared."""


@dataclass
class ArmResult:
    schedule: str
    seed: int
    points: list[Point] = field(default_factory=list)
    boundaries: list[dict] = field(default_factory=list)  # where each stage starts: stage, n_layers, seconds, ...
    stopped_at_target: bool = False
    eval_seconds: float = 0.0
    model: nn.Module | None = None  # the final stage's model where training ended (not in as_dict)

    @property
    def final_val_loss(self) -> float:
        return self.points[-1].val_loss

    def as_dict(self) -> dict:
        last = self.points[-1]
        return {
            "schedule": self.schedule,
            "seed": self.seed,
            "final_val_loss": self.final_val_loss,
            "train_seconds": last.seconds,
            "flops": last.flops,
            "tokens": last.tokens,
            "eval_seconds": self.eval_seconds,
            "stopped_at_target": self.stopped_at_target,
            "boundaries": self.boundaries,
            "points": [p.as_dict() for p in self.points],
        }


class _StageClock:
    """Training seconds of an arm so far: running from the start of a stage's training, paused while the
    benchmark evaluates."""

    def __init__(self, seconds: float):
        self.began, self.seconds, self.excluded = time.perf_counter(), seconds, 0.0

    def now(self) -> float:
        return self.seconds + time.perf_counter() - self.began - self.excluded

    @contextmanager
    def paused(self):
        t = time.perf_counter()
        yield self.now()
        self.excluded += time.perf_counter() - t


def _in_memory(model: nn.Module, spec, result, global_step: int) -> driver.Parent:
    """The trained stage as the next stage's parent, without the registry in between."""
    state = {n: t.detach().cpu().clone() for n, t in model.state_dict().items()}
    moments = result.moments
    return driver.Parent(spec.model.n_layers, result.cursor, global_step, lambda: (spec.model, state, moments))


def run_arm(
    preset: Preset,
    schedule: Schedule,
    corpus: Corpus,
    seed: int,
    hp: HParams,
    budget: Budget,
    *,
    stop_below: float | None = None,
    eval_set: list | None = None,
) -> ArmResult:
    """Train every stage of ``schedule`` in turn; stop once the *final* stage's val loss <= ``stop_below``
    (a smaller model that reaches the target on the way does not count: see bench.suite.figures.final_stage).
    ``eval_set``: the fixed batches every eval uses (bench/equal/study.py: the validation or the test split);
    None: the corpus's validation batches."""
    specs = pipeline_config(preset, schedule, seed, f"bench-{schedule.name}", hp, budget.scratch_steps).stage_specs()
    device = resolve_device(preset.train.device)
    val = eval_set if eval_set is not None else corpus.val_batches(preset.eval_batches, preset.eval_batch_size)
    arm = ArmResult(schedule.name, seed)
    seconds, step0, tokens0, flops0 = 0.0, 0, 0, 0.0
    parent: driver.Parent | None = None

    def record(model: nn.Module, stage: int, step: int, tokens: int, flops: float, at: float) -> float:
        t = time.perf_counter()
        loss = evaluate(model, val)
        arm.eval_seconds += time.perf_counter() - t
        arm.points.append(Point(stage, step, at, tokens, flops, loss))
        return loss

    for spec in specs:
        k, cfg = spec.index, spec.model
        prepared = driver.prepare(spec, parent)
        prepared.model.to(device)
        seconds += prepared.seconds
        arm.boundaries.append(
            {"stage": k, "n_layers": cfg.n_layers, "seconds": seconds, "flops": flops0, "tokens": tokens0}
        )
        record(prepared.model, k, step0, tokens0, flops0, seconds)
        tok_step = spec.train.batch_size * cfg.context
        flops_step = train_flops_per_token(cfg) * tok_step
        clock = _StageClock(seconds)
        origin = (k, prepared.model, step0, tokens0, flops0, tok_step, flops_step)

        def on_step(info: StepInfo, origin=origin, clock=clock) -> None:
            k, model, s0, t0, f0, tok, flops = origin
            if info.step % budget.eval_every and info.step != info.steps:
                return
            with clock.paused() as at:
                loss = record(model, k, s0 + info.step, t0 + info.step * tok, f0 + info.step * flops, at)
            if stop_below is not None and loss <= stop_below and k == len(specs):
                raise _Reached

        try:
            run = driver.train_prepared(spec, prepared, hooks=Hooks(on_step=on_step), corpus=corpus)
        except _Reached:
            arm.stopped_at_target, arm.model = True, prepared.model
            return arm
        seconds = clock.now()
        steps = spec.train.steps
        step0, tokens0, flops0 = step0 + steps, tokens0 + steps * tok_step, flops0 + steps * flops_step
        parent = _in_memory(run.model, spec, run.result, step0)
        arm.model = run.model if k == len(specs) else None
        del run, prepared
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return arm
