"""The staged schedules the benchmark runs, by name: the field's recipes side by side, each a list of
pipeline stages (bench.suite.spec.ArmStage) whose lengths are shares of the scratch budget.

None of them fixes an LR: peak, warmup and shape (cosine or warmup-stable-decay) are tuned per arm
with the same trials (bench/suite/tune.py). The earlier rounds' hand-tuned schedules (nodecay-lr4 and its
variants) are in the git history and docs/benchmarks.md's history section; ``best`` is the winner of
those rounds, restated without its hand-set LRs.

    plain      3 -> 6 -> 12 stacking (Gong et al. 2019), fresh AdamW and its own LR curve per stage
    best       3 -> 6 -> 12 identity growth + Adam moments carried + one LR curve, no re-warmup
    midas      3 -> 6 -> 9 -> 12 gradual middle stacking (MIDAS, Saunshi et al. 2024)
    gstack     3 -> 12 in one 4x stack (G_stack, Du et al. 2024), growth point from their fit
    late-jump  1 -> 12 identity growth at 80% of the budget (Bu 2025, zero/one-layer expansion)
"""

from __future__ import annotations

import math

from bench.suite.spec import ArmStage, Schedule


def gstack_growth_tokens(n_params: float, flops: float) -> float:
    """G_stack's growth timing d (tokens trained before the 4x stack) for a target of ``n_params``
    parameters and a budget of ``flops``: log10 d = 0.88 log10 N + 163.27 / log10 C - 5.74 (Du et al.
    2024, "Stacking Your Transformers", the fit published with their code: github.com/tongxuluo/prts)."""
    return 10 ** (0.88 * math.log10(n_params) + 163.27 / math.log10(flops) - 5.74)


# The fit covers 410M-7B models at about 1e20-1e23 FLOPs. At this benchmark's sizes (1e5 parameters,
# 1e10-1e12 FLOPs) the 163.27 / log10 C term explodes and the formula puts d far beyond the whole budget,
# so it cannot be used as it is. We transfer it in tokens per parameter of the *target* model, where
# d ~ N^0.88 is nearly scale-free: for their headline case, Llama2-7B on 2T tokens (their table), d is
# 11.1B tokens = 1.59 tokens per target parameter. G_stack here grows after that many tokens per
# parameter of the 12-layer model, at most half-way through the budget (the cap binds at <= 3 tokens per
# parameter, where the transferred d would leave the 12-layer model less than half the run).
GSTACK_TOKENS_PER_PARAM = gstack_growth_tokens(7e9, 6 * 7e9 * 2e12) / 7e9
GSTACK_MAX_SHARE = 0.5


def gstack(tokens_per_param: float) -> Schedule:
    """G_stack at a budget of ``tokens_per_param``: the 3-layer model for d tokens, then 4x stacked to 12."""
    share = min(GSTACK_MAX_SHARE, GSTACK_TOKENS_PER_PARAM / tokens_per_param)
    return Schedule(
        name="gstack",
        stages=[
            ArmStage(n_layers=3, share=share, schedule="continue"),
            ArmStage(n_layers=12, share=1.0 - share, growth="stack", schedule="continue"),
        ],
        note=f"G_stack (Du et al. 2024): 3L for {GSTACK_TOKENS_PER_PARAM:.2f} tokens/param (their fit, transferred; "
        f"at most {GSTACK_MAX_SHARE:g} of the budget), stacked 4x to 12L, fresh AdamW, the LR curve continued",
    )


SCHEDULES: dict[str, Schedule] = {
    s.name: s
    for s in [
        Schedule(
            name="plain",
            stages=[
                ArmStage(n_layers=3, share=0.25),
                ArmStage(n_layers=6, share=0.25),
                ArmStage(n_layers=12, share=1.0),
            ],
            note="the seed's 3->6->12 stacking (Gong et al. 2019): fresh AdamW and its own warmup + decay per stage",
        ),
        Schedule(
            name="best",
            stages=[
                ArmStage(n_layers=3, share=0.4, schedule="continue"),
                *[
                    ArmStage(n_layers=n, share=sh, growth="identity", optimizer="transfer", schedule="continue")
                    for n, sh in ((6, 0.3), (12, 0.5))
                ],
            ],
            note="the earlier rounds' winner: identity growth (new blocks' out-projections zeroed), Adam moments "
            "carried across growth, one LR curve over all stages (no re-warmup)",
        ),
        Schedule(
            name="midas",
            stages=[
                ArmStage(n_layers=3, share=0.15, schedule="continue"),
                *[
                    ArmStage(n_layers=n, share=sh, growth="middle", optimizer="transfer", schedule="continue")
                    for n, sh in ((6, 0.2), (9, 0.25), (12, 0.4))
                ],
            ],
            note="MIDAS (Saunshi et al. 2024): gradual middle stacking 3->6->9->12 (the middle block copied in place), "
            "longer stages as the model grows (shares ours), moments carried, one LR curve",
        ),
        gstack(1.0),  # the entry for listing and validation; each budget gets its own (resolve)
        Schedule(
            name="late-jump",
            stages=[
                ArmStage(n_layers=1, share=0.8, schedule="continue"),
                ArmStage(n_layers=12, share=0.2, growth="identity", optimizer="transfer", schedule="continue"),
            ],
            note="Bu 2025 (zero/one-layer expansion, arXiv 2511.04981): a 1-layer model jumped straight to 12 "
            "(identity growth) at 80% of the budget, one LR curve (WSD in the paper; the shape is tuned here)",
        ),
    ]
}
FIELD = ["plain", "best", "midas", "gstack", "late-jump"]  # the schedules every preset compares


def resolve(name: str, tokens_per_param: float) -> Schedule:
    """The schedule ``name`` at a budget: the same for every budget, except G_stack's growth point."""
    return gstack(tokens_per_param) if name == "gstack" else SCHEDULES[name]
