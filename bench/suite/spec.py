"""What a benchmark runs: a preset (model, data, budgets, seeds, tuning), the search space every arm is
tuned over, and, for one arm, one trial's hyperparameters and one budget, the pipeline config that trains it.

A schedule is a list of stages; each stage names its growth operator (models.growth), its optimizer
policy (reset or transfer the grown Adam moments) and its LR policy (models.train.policy: restart, continue,
rewarm): the very configs the Prefect pipeline's stages take. Stage lengths are *shares* of the scratch
baseline's step count at the budget, so one schedule fits every budget and preset. The LR itself (peak,
warmup, shape) is not part of a schedule: it is a trial's ``HParams``, tuned alike for every arm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from models.data import tokenizer as tokenizers
from models.data.bytes import DataConfig
from models.data.tokenizer import TokenizerConfig
from models.families.lookup import ModelConfig, family_of
from models.train.loop import TrainConfig
from tasks.config import PipelineConfig, StageConfig

_SHORTHAND = {"growth": "operator", "schedule": "policy", "optimizer": "state"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArmStage(StageConfig):
    """A pipeline stage (tasks.config.StageConfig) whose length is a share of the scratch budget."""

    share: float = Field(gt=0)  # steps = round(share * scratch steps at the budget)
    lr_scale: float = Field(1.0, gt=0)  # this stage's peak LR = the trial's x this (the μP arm's depth rule)

    def _one_end_rule(self) -> ArmStage:  # the length is `share`, not steps or until
        return self

    @field_validator("growth", "schedule", "optimizer", mode="before")
    @classmethod
    def _by_name(cls, value: Any, info) -> Any:
        """A bare name is shorthand: growth="identity" is GrowthConfig(operator="identity")."""
        return {_SHORTHAND[info.field_name]: value} if isinstance(value, str) else value

    def stage(self, scratch_steps: int) -> StageConfig:
        steps = max(1, round(self.share * scratch_steps))
        return StageConfig(**self.model_dump(exclude={"share", "steps", "lr_scale"}), steps=steps)


class Schedule(Strict):
    name: str
    stages: list[ArmStage] = Field(min_length=1)
    note: str = ""  # what it is and where it comes from, shown in the report
    model: dict[str, JsonValue] = {}  # this arm's departures from the preset's model, e.g. {depth_mup: sqrt}


class HParams(Strict):
    """One trial's point in the search space: what tuning sets for an arm, on top of its schedule."""

    lr: float = Field(gt=0)  # peak LR of every stage
    warmup: float = Field(ge=0, le=1)  # warmup, as a share of the steps the LR curve spans (see pipeline_config)
    shape: Literal["cosine", "wsd"]  # after the warmup: cosine decay, or warmup-stable-decay
    decay: float = Field(gt=0, le=1)  # wsd: the share of the span that decays (unused by cosine)


class SearchSpace(Strict):
    """The one declared search space: every arm, scratch included, is tuned over exactly this."""

    lr: tuple[float, float] = (1e-3, 2e-2)  # log-uniform; the byte models tolerate a high peak LR
    warmup: tuple[float, float] = (0.0, 0.2)
    shapes: tuple[Literal["cosine", "wsd"], ...] = ("cosine", "wsd")
    decay: tuple[float, float] = (0.1, 0.5)


class Tuning(Strict):
    trials: int = Field(ge=1)  # per arm and budget, the same for every arm
    seeds: list[int] = Field(min_length=1)  # tuning seeds: never used for a reported figure
    startup_trials: int = Field(ge=1)  # random (seeded) trials before TPE models the results
    sampler_seed: int = 0
    space: SearchSpace = SearchSpace()


class Preset(Strict):
    name: str
    model: ModelConfig  # the final (scratch) architecture: the byte GPT or a Llama-family model
    data: DataConfig
    # the pipeline's tokenizer: the byte vocabulary (the GPT's), or e.g. a BPE trained on the training split
    # (resolved once per preset, bench.suite.runner.open_corpora); a Llama's model.vocab_size must be its size
    tokenizer: TokenizerConfig = TokenizerConfig()
    train: TrainConfig  # batch size, min LR ratio, weight decay...; lr and warmup come from each trial
    budgets: list[float] = Field(min_length=1)  # training tokens per parameter of the final model, one run each
    flow_budget: float | None = None  # the budget of the one run through the Prefect flow; None: the smallest
    tuning: Tuning
    heldout_seeds: list[int] = Field(min_length=1)  # the reported figures come from these seeds only
    schedules: list[str] = Field(min_length=1)  # names in bench.suite.schedules.SCHEDULES
    evals_per_run: int = Field(30, ge=2)  # validation evals over a scratch run (eval_every = steps // this)
    eval_batches: int = Field(2, ge=1)
    eval_batch_size: int = Field(32, ge=1)
    defaults: HParams = HParams(lr=4e-3, warmup=0.1, shape="wsd", decay=0.2)  # untuned runs (--only orchestration)
    throughput_steps: int = Field(12, ge=4)  # steps per throughput sample (train() vs the bare loop)
    throughput_rounds: int = Field(5, ge=1)
    matmul_size: int = 2048
    peak_dtype: Literal["float32", "bfloat16"] = "float32"

    @model_validator(mode="after")
    def _heldout_never_tuned(self) -> Preset:
        if shared := sorted(set(self.heldout_seeds) & set(self.tuning.seeds)):
            raise ValueError(f"held-out seeds {shared} are also tuning seeds: a reported figure would be a tuned one")
        if any(b <= 0 for b in self.budgets):
            raise ValueError(f"budgets must be positive tokens per parameter, got {self.budgets}")
        if self.flow_budget is not None and self.flow_budget not in self.budgets:
            raise ValueError(f"flow_budget {self.flow_budget:g} is not one of the budgets {self.budgets}")
        family = family_of(self.model)
        if family.fixed_vocab is not None and self.tokenizer.kind != "bytes":
            raise ValueError(
                f"model.arch {family.name} reads bytes: a tokenizer.train/path preset needs a tokenized arch"
            )
        if (n := tokenizer_vocab(self.tokenizer)) != (v := family.vocab_size(self.model)):
            raise ValueError(f"model.vocab_size {v} is not the tokenizer's {n}: set both alike")
        return self

    @property
    def flow_tokens_per_param(self) -> float:
        return min(self.budgets) if self.flow_budget is None else self.flow_budget


@dataclass(frozen=True)
class Budget:
    """One training budget: the scratch run's length; every schedule's stages are shares of it."""

    tokens_per_param: float
    params: int  # of the final architecture, embeddings included
    scratch_steps: int
    eval_every: int  # steps between the benchmark's validation evals, in every stage of every arm
    tokens_per_step: int

    @property
    def tokens(self) -> int:
        return self.scratch_steps * self.tokens_per_step


def tokenizer_vocab(cfg: TokenizerConfig) -> int:
    """How many tokens ``cfg`` gives the model: 256 bytes, the BPE's vocab_size, or the file's."""
    if cfg.train is not None:
        return cfg.train.vocab_size
    return tokenizers.vocab_size(tokenizers.load(cfg.path)) if cfg.path else tokenizers.BYTE_ALPHABET


def n_params(cfg: ModelConfig) -> int:
    """Every parameter of the architecture, embeddings included (a tied head once): the family's exact count."""
    return family_of(cfg).num_params(cfg)


def budget(preset: Preset, tokens_per_param: float) -> Budget:
    """The scratch run of ``tokens_per_param`` tokens per parameter, in whole steps."""
    params, per_step = n_params(preset.model), preset.train.batch_size * preset.model.context
    steps = max(2, round(tokens_per_param * params / per_step))
    return Budget(tokens_per_param, params, steps, max(1, round(steps / preset.evals_per_run)), per_step)


def scratch_schedule(preset: Preset) -> Schedule:
    """The baseline: the final architecture trained from a fresh init for the whole budget."""
    return Schedule(
        name="scratch",
        stages=[ArmStage(n_layers=preset.model.n_layers, share=1.0)],
        note=f"{preset.model.n_layers} layers from scratch, tuned like every schedule",
    )


def pipeline_config(
    preset: Preset, schedule: Schedule, seed: int, model_name: str, hp: HParams, scratch_steps: int
) -> PipelineConfig:
    """An arm as the pipeline config that trains it: the stages the Prefect flow would run, stage for stage.

    The trial's LR applies to every stage: peak ``hp.lr``; the shape ``hp.shape`` on each stage's own
    policy; a warmup of ``hp.warmup`` of the span the curve is laid over (a stage's own steps under
    ``restart``, the whole pipeline's under ``continue``/``rewarm``). A stage's explicit ``train``
    overrides in the schedule win over the trial's. train()'s own evaluations are reduced to one batch at
    the start and end of each stage: the benchmark evaluates on its own fixed batches, clock paused."""
    stages = [p.stage(scratch_steps) for p in schedule.stages]
    total = sum(s.steps for s in stages)
    tree_stages = []
    last_growth = total - stages[-1].steps  # one WSD curve decays in the final stage only (models/train/policy.py)
    for st, arm_stage in zip(stages, schedule.stages):
        span = st.steps if st.schedule.policy == "restart" else total
        decay = hp.decay if st.schedule.policy == "restart" else min(hp.decay, (total - last_growth) / total)
        train = {"warmup_steps": round(hp.warmup * span), **st.train.model_dump(exclude_none=True)}
        if arm_stage.lr_scale != 1.0:
            train["lr"] = hp.lr * arm_stage.lr_scale
        sched = {**st.schedule.model_dump(), "shape": hp.shape, "decay_fraction": decay}
        tree_stages.append({**st.model_dump(), "train": train, "schedule": sched})
    base = preset.train.model_dump(exclude={"steps"}) | {"lr": hp.lr, "eval_every": 10**6, "eval_batches": 1}
    arch = preset.model.model_dump(exclude={"n_layers", "vocab_size"}) | schedule.model  # vocabulary: the tokenizer's
    tree = {"seed": seed, "retry": {"retries": 0}, "data": preset.data.model_dump(), "model": arch, "train": base}
    tree |= {"tokenizer": preset.tokenizer.model_dump(), "registry": {"model_name": model_name}}
    return PipelineConfig.model_validate({**tree, "stages": tree_stages})


def train_flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token: the family's one count (``Family.flops_per_token``: 6 N + attention)."""
    return family_of(cfg).flops_per_token(cfg)
