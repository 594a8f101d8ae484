"""`staged plan`'s logic: from a target model and a token budget, the schedule to run, when to grow, the
predicted saving with its uncertainty, and the pipeline config that runs it.

The prediction is the savings law fitted by bench/equal/report.py (docs/llama-budgets.json): log of the
effective-compute multiplier against log tokens/param and log parameters, inside the range it was fitted
on only. G_stack's own growth-point formula (Du et al. 2024) is used where it was fitted (>= 410M
parameters, >= 1e20 FLOPs); below that, the growth points are the schedule's measured shares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from bench.equal import budgets as llama_budgets
from bench.equal.law import predict
from bench.equal.study import arms, equalised
from bench.suite.schedules import gstack_growth_tokens
from bench.suite.spec import HParams, Preset, pipeline_config, train_flops_per_token
from models.errors import UserError
from models.families.lookup import family_of

LAW = Path(__file__).resolve().parents[1] / "docs" / "llama-budgets.json"
GSTACK_FITTED = (4.1e8, 1e20)  # parameters, FLOPs: where G_stack's formula was fitted


class OutOfRange(UserError, ValueError):
    """A plan the law cannot make: outside what it was fitted on. One line."""


@dataclass(frozen=True)
class Plan:
    schedule: str
    params: int
    tokens: int
    tokens_per_param: float
    stages: list[tuple[int, int]]  # (layers, steps)
    multiplier: float
    multiplier_range: tuple[float, float]  # +- one residual standard deviation of the law
    saving: float  # 1 - 1 / multiplier: the share of scratch's compute saved at equal loss
    growth_rule: str
    fitted: dict

    def lines(self) -> list[str]:
        lo, hi = self.multiplier_range
        return [
            f"target: {self.params:,} parameters, {self.tokens:,} tokens = {self.tokens_per_param:.1f} tokens/param",
            f"schedule: {self.schedule} ({' -> '.join(f'{n}L x {s} steps' for n, s in self.stages)})",
            f"when to grow: {self.growth_rule}",
            f"predicted effective-compute multiplier {self.multiplier:.2f} (range {lo:.2f}-{hi:.2f}, +-1 sigma): "
            f"saving {self.saving:.0%} of scratch's compute at equal loss",
            f"law fitted on {self.fitted['tpp_range'][0]:g}-{self.fitted['tpp_range'][1]:g} tokens/param, "
            f"{self.fitted['params_range'][0]:,}-{self.fitted['params_range'][1]:,} parameters",
        ]


def make_plan(preset: Preset, tokens: int, law: dict) -> tuple[Plan, object]:
    """The plan and its PipelineConfig for ``preset.model`` trained on ``tokens`` tokens."""
    fam = family_of(preset.model)
    n = fam.num_params(preset.model)
    tpp = tokens / n
    fit = law["law"]["best"]["full_fit"]
    (t0, t1), (n0, n1) = fit["tpp_range"], fit["params_range"]
    if not (t0 <= tpp <= t1 and n0 <= n <= n1):
        raise OutOfRange(
            f"{n:,} parameters at {tpp:.1f} tokens/param is outside the fitted range ({t0:g}-{t1:g} tokens/param, "
            f"{n0:,}-{n1:,} parameters): no prediction"
        )
    nearest = min(
        law["budgets"],
        key=lambda b: abs(math.log(b["tokens_per_param"] / tpp)) + abs(math.log(b["params"] / n)),
    )
    name = nearest["best_schedule"]
    y, sigma = predict(fit, tpp, n), fit["sigma"] or 0.0
    scratch_steps = max(2, round(tokens / (preset.train.batch_size * preset.model.context)))
    schedule = equalised(arms(preset.model.n_layers, tpp)[name], preset)
    flops = tokens * train_flops_per_token(preset.model)
    if name == "gstack" and n >= GSTACK_FITTED[0] and flops >= GSTACK_FITTED[1]:
        d = gstack_growth_tokens(n, flops)
        rule = f"G_stack's formula: grow after {d:,.0f} tokens"
        first = schedule.stages[0].model_copy(update={"share": d / tokens})
        schedule = schedule.model_copy(update={"stages": [first, *schedule.stages[1:]]})
    else:
        rule = "the schedule's measured growth points (G_stack's formula is fitted at >= 410M parameters, 1e20 FLOPs)"
    hp = HParams(**law["tuning"]["arms"][name]["best_params"])
    cfg = pipeline_config(preset, schedule, 0, "staged-plan", hp, scratch_steps)
    stages = [(s.n_layers, s.steps) for s in cfg.stages]
    m = math.exp(y)
    plan = Plan(name, n, tokens, tpp, stages, m, (math.exp(y - sigma), math.exp(y + sigma)), 1 - 1 / m, rule, fit)
    return plan, cfg


def target_preset(size: str | None, model: dict | None) -> Preset:
    """The llama-budgets preset of ``size``, or with the model of a config (its final stage's depth)."""
    base = llama_budgets.preset(size or "s")
    if model is None:
        return base
    merged = base.model.model_dump() | model | {"vocab_size": base.model.vocab_size}
    return base.model_copy(update={"model": type(base.model).model_validate(merged)})
