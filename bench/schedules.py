"""The staged schedules a benchmark can run, by name: each a list of pipeline stages (bench.spec.ArmStage)
whose lengths are shares of the scratch budget. The rounds that produced them: docs/benchmarks.md."""

from __future__ import annotations

from typing import Any

from bench.spec import ArmStage, Schedule


def _s(*stages: ArmStage, name: str, note: str, model: dict | None = None) -> Schedule:
    return Schedule(name=name, stages=list(stages), note=note, model=model or {})


_HI = {"lr": 4e-3}
_CONST4 = {"lr": 4e-3, "min_lr_ratio": 1.0}
SCHEDULES: dict[str, Schedule] = {
    s.name: s
    for s in [
        _s(
            ArmStage(n_layers=3, share=0.25),
            ArmStage(n_layers=6, share=0.25),
            ArmStage(n_layers=12, share=1.0),
            name="plain",
            note="reference: stacking, fresh AdamW per stage, a quarter of the budget per small stage",
        ),
        _s(
            ArmStage(n_layers=3, share=0.25),
            ArmStage(n_layers=6, share=0.25),
            ArmStage(n_layers=12, share=0.5),
            name="short-final",
            note="plain, but the 12L cosine is half the scratch budget",
        ),
        _s(
            ArmStage(n_layers=3, share=0.4),
            ArmStage(n_layers=6, share=0.3),
            ArmStage(n_layers=12, share=0.5),
            name="front-loaded",
            note="more steps in the cheap stages, short final stage",
        ),
        _s(
            ArmStage(n_layers=3, share=0.4, train=_HI),
            ArmStage(n_layers=6, share=0.3, train=_HI),
            ArmStage(n_layers=12, share=0.5),
            name="front-loaded-hilr",
            note="front-loaded with 2x LR in the small stages",
        ),
        _s(
            ArmStage(n_layers=3, share=0.4, train={"min_lr_ratio": 1.0}),
            ArmStage(n_layers=6, share=0.3, train={"min_lr_ratio": 1.0}),
            ArmStage(n_layers=12, share=0.5),
            name="front-loaded-nodecay",
            note="front-loaded, constant LR in the small stages (no cosine before growth)",
        ),
        _s(
            ArmStage(n_layers=3, share=0.2, train={"batch_size": 64}),
            ArmStage(n_layers=6, share=0.15, train={"batch_size": 64}),
            ArmStage(n_layers=12, share=0.5),
            name="front-loaded-bigbatch",
            note="front-loaded tokens, 2x batch in the small stages",
        ),
        _s(ArmStage(n_layers=6, share=0.6), ArmStage(n_layers=12, share=0.5), name="two-stage", note="6 -> 12 only"),
        _s(
            ArmStage(n_layers=3, share=0.4, train=_CONST4),
            ArmStage(n_layers=6, share=0.3, train=_CONST4),
            ArmStage(n_layers=12, share=0.5, train=_HI),
            name="nodecay-lr4",
            note="front-loaded, constant 4e-3 in the small stages, 4e-3 cosine in the final one",
        ),
        _s(
            ArmStage(n_layers=3, share=0.5, train=_CONST4),
            ArmStage(n_layers=6, share=0.35, train=_CONST4),
            ArmStage(n_layers=12, share=0.35, train=_HI),
            name="heavy-nodecay-lr4",
            note="nodecay-lr4 with even more in the small stages and a shorter final stage",
        ),
    ]
}


def _variant(name: str, note: str, *, base: str = "nodecay-lr4", **later: Any) -> Schedule:
    """``base`` with ``later`` (growth, optimizer, schedule; train: merged) set on every stage after the first."""
    stages = SCHEDULES[base].stages
    train = later.pop("train", {})
    grown = [
        ArmStage.model_validate(
            {**p.model_dump(), **later, "train": {**p.train.model_dump(exclude_none=True), **train}}
        )
        for p in stages[1:]
    ]
    return _s(stages[0], *grown, name=name, note=note)


# Round 3 (docs/benchmarks.md): growth operators, Adam-moment transfer and LR policies, each as one
# change to nodecay-lr4 where possible, measured on the quick preset.
_HALF = {"d_model": 32, "n_heads": 2, "d_ff": 128}  # the quick model at half width (width growth doubles it)
_MASKED = {"operator": "masked", "ramp_steps": 20}
_HALF_STAGES = (ArmStage(n_layers=3, share=0.4, train=_CONST4), ArmStage(n_layers=6, share=0.3, train=_CONST4))
_NOISY_WIDTH = {"operator": "width", "noise": 0.01}
for _sched in [
    _variant("nodecay-lr4-transfer", "nodecay-lr4, Adam moments carried across growth", optimizer="transfer"),
    _variant(
        "nodecay-lr4-transfer-nowarm",
        "nodecay-lr4 + transfer, no LR warmup after growth",
        optimizer="transfer",
        train={"warmup_steps": 0},
    ),
    _variant(
        "nodecay-lr4-identity-transfer-nowarm",
        "identity growth + Adam moments carried, no LR warmup after growth",
        growth="identity",
        optimizer="transfer",
        train={"warmup_steps": 0},
    ),
    _variant("nodecay-lr4-interleave", "nodecay-lr4, each block repeated in place", growth="interleave"),
    _variant(
        "nodecay-lr4-identity",
        "nodecay-lr4, function-preserving: new blocks' out-projections zeroed",
        growth="identity",
    ),
    _variant(
        "nodecay-lr4-masked",
        "nodecay-lr4, function-preserving: new blocks gated 0 -> 1 over 20 steps (MSG)",
        growth=_MASKED,
    ),
    _variant(
        "nodecay-lr4-masked-transfer", "nodecay-lr4-masked + Adam moments carried", growth=_MASKED, optimizer="transfer"
    ),
    _variant(
        "nodecay-lr4-stack-transfer-identity",
        "identity growth in stack layout + Adam moments carried",
        growth={"operator": "identity", "layout": "stack"},
        optimizer="transfer",
    ),
    _s(
        *[ArmStage(n_layers=n, share=sh, train=_HI, schedule="continue") for n, sh in ((3, 0.4), (6, 0.3), (12, 0.5))],
        name="continue-lr4",
        note="nodecay-lr4's stages, one warmup + cosine (4e-3) across all stages (LR continue)",
    ),
    _s(
        ArmStage(n_layers=3, share=0.4, train=_HI, schedule="continue"),
        *[
            ArmStage(n_layers=n, share=sh, train=_HI, schedule="continue", optimizer="transfer")
            for n, sh in ((6, 0.3), (12, 0.5))
        ],
        name="continue-transfer-lr4",
        note="continue-lr4 + Adam moments carried: growth as if it had not happened",
    ),
    _s(
        *_HALF_STAGES,
        ArmStage(n_layers=6, share=0.15, train=_CONST4, growth="width"),
        ArmStage(n_layers=12, share=0.4, train=_HI),
        name="width-depth",
        model=_HALF,
        note="3L -> 6L at half width, width doubled at 6L, then 12L (nodecay-lr4's LR policy)",
    ),
    _s(
        *_HALF_STAGES,
        ArmStage(n_layers=6, share=0.15, train=_CONST4, growth=_NOISY_WIDTH),
        ArmStage(n_layers=12, share=0.4, train=_HI),
        name="width-depth-noise",
        model=_HALF,
        note="width-depth, symmetry broken by noise 0.01 (without it the twin halves get identical gradients forever)",
    ),
    _s(
        *_HALF_STAGES,
        ArmStage(
            n_layers=6, share=0.15, train={**_CONST4, "warmup_steps": 0}, growth=_NOISY_WIDTH, optimizer="transfer"
        ),
        ArmStage(n_layers=12, share=0.4, train={**_HI, "warmup_steps": 0}, growth="identity", optimizer="transfer"),
        name="width-depth-identity-transfer-nowarm",
        model=_HALF,
        note="width-depth-noise with the winner's policies: identity, moments carried, no warmup",
    ),
]:
    SCHEDULES[_sched.name] = _sched
# The baseline gets the same tuning effort: scratch variants, run as "schedules" against the default
# scratch arm (ratio < 1 means the variant is the better baseline and should become scratch_train).
for _k, _v in [
    ("lr", 1e-3),
    ("lr", 2e-3),
    ("lr", 3e-3),
    ("lr", 4e-3),
    ("lr", 6e-3),
    ("warmup_steps", 5),
    ("warmup_steps", 20),
    ("warmup_steps", 60),
]:
    _n = f"scratch-{'wu' if _k == 'warmup_steps' else 'lr'}{_v:g}"
    SCHEDULES[_n] = Schedule(
        name=_n, stages=[ArmStage(n_layers=12, share=1.0, train={_k: _v})], note="baseline sweep", baseline=True
    )

SCHEDULES["tiny"] = _s(
    ArmStage(n_layers=1, share=0.5),
    ArmStage(n_layers=2, share=0.5),
    ArmStage(n_layers=4, share=0.5),
    name="tiny",
    note="test schedule for the tiny preset",
)
for _name, _later in [
    ("tiny-msg", {"growth": {"operator": "masked", "ramp_steps": 3}, "optimizer": "transfer", "schedule": "continue"}),
    ("tiny-transfer", {"optimizer": "transfer"}),
    ("tiny-identity", {"growth": "identity"}),
]:
    SCHEDULES[_name] = _variant(_name, f"tiny with {_later}", base="tiny", **_later)
