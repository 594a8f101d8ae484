"""One pydantic config tree for a pipeline, loaded from YAML with ``--set a.b=c`` overrides.

    PipelineConfig
      seed, retries, checkpoint_every, checkpoint_keep, storage, data, model (stage 1's widths; a `width` stage doubles them for itself and later
      stages), train (defaults for all stages), registry,
      stages: [StageConfig(n_layers, steps | until, growth, optimizer, schedule, train overrides), ...]

``PipelineConfig.stage_specs()`` resolves it into one self-contained ``StageSpec`` per stage:
the only thing a stage task needs, and what its ``stage_key`` hashes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.data import DataConfig
from models.gpt import GPTConfig
from models.growth import GrowthConfig, GrowthError, child_config, dry_run
from models.optim import OptimizerConfig
from models.policy import ScheduleConfig, UntilConfig, step_cap
from models.train import TrainConfig
from tasks.storage import check_uri

__all__ = [
    "GateConfig",
    "GrowthConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "UntilConfig",
    "PipelineConfig",
    "StageSpec",
    "load_config",
]


class ConfigError(ValueError):
    """A user mistake in a config file or override; the message is one line."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WidthConfig(Strict):
    """Stage 1's model fields; each stage sets its own ``n_layers``, a ``width`` stage doubles the widths."""

    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 512
    context: int = 128
    dropout: float = 0.0


class StageConfig(Strict):
    n_layers: int = Field(ge=1)
    steps: int | None = Field(None, ge=0)  # 0: grow and register without training; or set `until` instead
    until: UntilConfig = UntilConfig()  # a tokens budget or a loss-slope trigger, instead of `steps`
    growth: GrowthConfig = GrowthConfig()  # how this stage is made from the previous one (ignored for stage 1)
    optimizer: OptimizerConfig = OptimizerConfig()  # AdamW after growth: reset or transfer (ignored for stage 1)
    schedule: ScheduleConfig = ScheduleConfig()  # LR across growth: restart, continue or rewarm
    train: dict[str, Any] = {}  # overrides of the pipeline's `train` for this stage, e.g. {lr: 1e-3}
    checkpoint_every: int | None = Field(None, ge=0)  # overrides the pipeline's checkpoint_every
    # > 1: train under torchrun with DistributedDataParallel, this many processes (one per GPU, or
    # gloo on CPU); train.batch_size stays the global batch and must divide by it. Not in the stage key.
    nproc: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _one_end_rule(self) -> StageConfig:
        rules = [self.steps is not None, self.until.tokens is not None, self.until.loss_slope is not None]
        if sum(rules) != 1:
            raise ValueError("set exactly one of steps, until.tokens and until.loss_slope")
        return self


class RegistryConfig(Strict):
    model_name: str = Field("staged-gpt", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    experiment: str | None = None  # MLflow experiment; defaults to the model name


class StorageConfig(Strict):
    """Where checkpoints (and, with an embedded MLflow store, MLflow artifacts) go."""

    uri: str | None = None  # None: <workdir>/checkpoints; a local path; or s3://bucket/prefix
    max_attempts: int = Field(5, ge=1)  # botocore standard-mode attempts per S3 call

    @field_validator("uri")
    @classmethod
    def _valid_uri(cls, uri: str | None) -> str | None:
        return None if uri is None else check_uri(uri)


class GateConfig(Strict):
    """The evaluation gate: which version may become the champion alias (tasks/gate.py).

    Not part of any stage key: changing the gate never retrains anything.
    """

    enabled: bool = True
    metric: Literal["val_loss", "bpb"] = "val_loss"  # lower is better for both; bpb = val_loss / ln 2
    margin: float = Field(0.01, ge=0)  # the candidate must beat the champion by more than this, in the metric's unit
    every_stage: bool = False  # gate every stage's version, not only the last one
    alias: str = Field("champion", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
    eval_batches: int = Field(8, ge=1)  # held-out set: this many fixed validation batches...
    batch_size: int = Field(16, ge=1)  # ...of this many sequences of the model's context
    prompt: str = "def "  # the fixed generation sample: seeded, so the same version always writes the same text
    sample_bytes: int = Field(64, ge=0)


class StageSpec(Strict):
    """Everything one stage needs, resolved: stage k of a pipeline (1-based)."""

    index: int
    seed: int
    model_name: str
    experiment: str
    model: GPTConfig
    train: TrainConfig  # train.steps: the stage's step cap (steps, tokens / (batch x context), or max_steps)
    growth: GrowthConfig
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    until: UntilConfig = UntilConfig()
    total_steps: int | None = None  # planned steps of the whole pipeline; set only when the schedule reads it
    data: DataConfig
    checkpoint_every: int = 0  # 0: no in-stage checkpoints
    checkpoint_keep: int = 2
    nproc: int = 1  # processes under torchrun (DistributedDataParallel); 1: in the task process

    def content_hash(self) -> str:
        """What the stage computes. Left out: checkpoint cadence (changes nothing in the weights) and
        nproc (the same global batch and steps: the same weights up to float summation order, and,
        with dropout > 0, other dropout masks)."""
        exclude = {"checkpoint_every", "checkpoint_keep", "nproc"}
        return hashlib.sha256(self.model_dump_json(exclude=exclude).encode()).hexdigest()


class PipelineConfig(Strict):
    """Defaults are the demo: 3 -> 6 -> 12 layers, about five minutes on 2 CPU cores."""

    seed: int = 0
    retries: int = Field(1, ge=0)  # Prefect task retries per stage (a retry resumes from the last checkpoint)
    retry_delay_s: float = Field(10, ge=0)  # pause before a retry: give a flaky registry or disk a moment
    checkpoint_every: int = Field(50, ge=0)  # steps between in-stage checkpoints (and one after the last); 0: none
    checkpoint_keep: int = Field(2, ge=1)  # newest checkpoints kept per stage
    storage: StorageConfig = StorageConfig()
    data: DataConfig = DataConfig()
    model: WidthConfig = WidthConfig()
    train: TrainConfig = TrainConfig()
    registry: RegistryConfig = RegistryConfig()
    gate: GateConfig = GateConfig()
    stages: list[StageConfig] = Field(
        default=[
            StageConfig(n_layers=3, steps=400),
            StageConfig(n_layers=6, steps=250),
            StageConfig(n_layers=12, steps=200),
        ],
        min_length=1,
    )

    @field_validator("train")
    @classmethod
    def _steps_belong_to_stages(cls, train: TrainConfig) -> TrainConfig:
        if "steps" in train.model_fields_set:
            raise ValueError("set steps per stage (stages.<i>.steps), not under train")
        return train

    @model_validator(mode="after")
    def _stages_resolve_and_grow(self) -> PipelineConfig:
        specs = self.stage_specs()  # raises on bad per-stage train overrides or model shapes
        for prev, spec in zip(specs, specs[1:]):
            try:
                dry_run(spec.growth, prev.model, spec.model)
            except GrowthError as e:
                raise ValueError(f"stages.{spec.index - 1}: {e}") from None
        return self

    def stage_specs(self) -> list[StageSpec]:
        specs: list[StageSpec] = []
        model: GPTConfig | None = None
        for k, stage in enumerate(self.stages, start=1):
            try:
                if model is None:
                    model = GPTConfig(n_layers=stage.n_layers, **self.model.model_dump())
                else:  # derived from the previous stage: same widths, or doubled by a width stage
                    model = child_config(stage.growth, model, stage.n_layers)
                train = TrainConfig(**{**self.train.model_dump(), **stage.train, "steps": 0})
                cap = step_cap(stage.steps, stage.until, train.batch_size * model.context)
                if train.batch_size % stage.nproc:
                    batch, n = train.batch_size, stage.nproc
                    raise ValueError(f"stages.{k - 1}: train.batch_size {batch} is not divisible by nproc {n}")
                spec = StageSpec(
                    index=k,
                    seed=self.seed,
                    model_name=self.registry.model_name,
                    experiment=self.registry.experiment or self.registry.model_name,
                    model=model,
                    train=train.model_copy(update={"steps": cap}),
                    growth=stage.growth,
                    optimizer=stage.optimizer,
                    schedule=stage.schedule,
                    until=stage.until,
                    data=self.data,
                    checkpoint_every=self.checkpoint_every
                    if stage.checkpoint_every is None
                    else stage.checkpoint_every,
                    checkpoint_keep=self.checkpoint_keep,
                    nproc=stage.nproc,
                )
            except ValidationError as e:
                raise ValueError(f"stages.{k - 1}: {format_validation_error(e)}") from None
            specs.append(spec)
        total = sum(s.train.steps for s in specs)  # only schedules that read it carry it: no needless cache misses
        return [s.model_copy(update={"total_steps": total}) if s.schedule.policy != "restart" else s for s in specs]


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_override(tree: dict, item: str) -> None:
    """Set ``a.b.0.c=value`` in a nested dict/list tree; the value is parsed as YAML (3, 1e-3, true, null)."""
    path, value = _parse_override(item)
    node: Any = tree
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {item!r}: {'.'.join(path[:i])} has no item {part!r} (it has {len(node)})")
            part = int(part)
        elif isinstance(node, dict):
            if not last and part not in node:
                node[part] = {}
        else:
            raise ConfigError(f"override {item!r}: {'.'.join(path[:i])} is not a mapping or a list")
        if last:
            node[part] = value
        else:
            node = node[part]


def format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> PipelineConfig:
    """Read YAML (or start from the defaults when ``path`` is None), apply overrides, validate."""
    tree: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    if overrides and "stages" not in tree:
        tree["stages"] = [s.model_dump() for s in PipelineConfig.model_fields["stages"].default]
    for item in overrides:
        apply_override(tree, item)
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(f"invalid config: {format_validation_error(e)}") from None


def pipeline_hash(config: PipelineConfig) -> str:
    """Short hash of the whole resolved config: names the pipeline in Prefect (flow run) and MLflow (parent run)."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:8]


def resolve_config(config: PipelineConfig | str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """The flow's ``config`` parameter as a PipelineConfig: as given, or loaded from a YAML path (None: the
    defaults) with ``overrides``."""
    return config if isinstance(config, PipelineConfig) else load_config(config, overrides or [])
