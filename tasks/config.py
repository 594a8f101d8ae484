"""One pydantic config tree for a pipeline, loaded from YAML with ``--set a.b=c`` overrides.

    PipelineConfig
      seed, retries, data, model (widths shared by all stages), train (defaults for all stages),
      registry, stages: [StageConfig(n_layers, steps, growth, train overrides), ...]

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
from models.growth import GrowthError, dry_run
from models.train import TrainConfig


class ConfigError(ValueError):
    """A user mistake in a config file or override; the message is one line."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GrowthConfig(Strict):
    operator: Literal["stack"] = "stack"


class WidthConfig(Strict):
    """Model fields shared by every stage; each stage sets its own ``n_layers``."""

    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 512
    context: int = 128
    dropout: float = 0.0


class StageConfig(Strict):
    n_layers: int = Field(ge=1)
    steps: int = Field(ge=0)  # 0: grow and register without training
    growth: GrowthConfig = GrowthConfig()  # how this stage is made from the previous one (ignored for stage 1)
    train: dict[str, Any] = {}  # overrides of the pipeline's `train` for this stage, e.g. {lr: 1e-3}


class RegistryConfig(Strict):
    model_name: str = Field("staged-gpt", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    experiment: str | None = None  # MLflow experiment; defaults to the model name


class StageSpec(Strict):
    """Everything one stage needs, resolved: stage k of a pipeline (1-based)."""

    index: int
    seed: int
    model_name: str
    experiment: str
    model: GPTConfig
    train: TrainConfig
    growth: GrowthConfig
    data: DataConfig

    def content_hash(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


class PipelineConfig(Strict):
    """Defaults are the demo: 3 -> 6 -> 12 layers, about five minutes on 2 CPU cores."""

    seed: int = 0
    retries: int = Field(1, ge=0)  # Prefect task retries per stage (a retry re-runs the whole stage)
    data: DataConfig = DataConfig()
    model: WidthConfig = WidthConfig()
    train: TrainConfig = TrainConfig()
    registry: RegistryConfig = RegistryConfig()
    stages: list[StageConfig] = Field(
        default=[StageConfig(n_layers=3, steps=400), StageConfig(n_layers=6, steps=250), StageConfig(n_layers=12, steps=200)],
        min_length=1,
    )

    @field_validator("train")
    @classmethod
    def _steps_belong_to_stages(cls, train: TrainConfig) -> TrainConfig:
        if "steps" in train.model_fields_set:
            raise ValueError("set steps per stage (stages.<i>.steps), not under train")
        return train

    @model_validator(mode="after")
    def _stages_resolve_and_grow(self) -> "PipelineConfig":
        specs = self.stage_specs()  # raises on bad per-stage train overrides or model shapes
        for prev, spec in zip(specs, specs[1:]):
            try:
                dry_run(spec.growth.operator, prev.model, spec.model)
            except GrowthError as e:
                raise ValueError(f"stages.{spec.index - 1}: {e}") from None
        return self

    def stage_specs(self) -> list[StageSpec]:
        specs = []
        for k, stage in enumerate(self.stages, start=1):
            train = {**self.train.model_dump(), **stage.train, "steps": stage.steps}
            try:
                spec = StageSpec(
                    index=k,
                    seed=self.seed,
                    model_name=self.registry.model_name,
                    experiment=self.registry.experiment or self.registry.model_name,
                    model=GPTConfig(n_layers=stage.n_layers, **self.model.model_dump()),
                    train=TrainConfig(**train),
                    growth=stage.growth,
                    data=self.data,
                )
            except ValidationError as e:
                raise ValueError(f"stages.{k - 1}: {format_validation_error(e)}") from None
            specs.append(spec)
        return specs


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
