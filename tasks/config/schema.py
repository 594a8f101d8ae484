"""One pydantic config tree for a pipeline (loading and overrides: tasks/config/load.py).

    PipelineConfig
      seed, retry, checkpoint, storage, data, registry, gate, limits,
      model  (stage 1's architecture, told apart by `arch`: a family of models/families/ (config/model_section.py);
              each stage sets n_layers, a `width` stage doubles the widths),
      tokenizer  (the byte vocabulary, a BPE trained on the training split, or a local tokenizer.json),
      train  (defaults for every stage),
      stages: [StageConfig(n_layers, steps | until, growth, optimizer, schedule, train, checkpoint, parallel, init)]

``PipelineConfig.stage_specs()`` resolves it into one self-contained ``StageSpec`` per stage:
the only thing a stage needs, and what its stage key hashes (tasks/config/identity.py).
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from models.data.bytes import DataConfig, StageData
from models.data.tokenizer import TokenizerConfig
from models.families.lookup import ModelConfig
from models.growth import GrowthConfig, GrowthError, child_config, dry_run
from models.train.loop import TrainConfig
from models.train.optim import OptimizerConfig
from models.train.policy import MAX_STEPS, ScheduleConfig, UntilConfig, growth_in_decay, step_cap
from tasks.config.limits import LimitsConfig, check_fit, check_shapes, check_trainer
from tasks.config.model_section import ArchConfig, InitConfig, Strict, default_section, first_model
from tasks.config.parallel import ParallelConfig
from tasks.config.worker import POOL_NAME, WorkerConfig
from tasks.store import check_uri


def format_validation_error(err: ValidationError) -> str:
    """pydantic's errors as one line: ``where: what; where: what``."""
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def non_finite(value, path: str = "") -> list[str]:
    """The dotted keys of every NaN or infinite float in a config value (its models, lists and mappings)."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [path]
    if isinstance(value, BaseModel):
        items = ((name, getattr(value, name)) for name in type(value).model_fields)
    elif isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return []
    return [key for k, v in items for key in non_finite(v, f"{path}.{k}" if path else str(k))]


# ``stages.<i>.train``: any TrainConfig field but ``steps`` (a stage's length is its own steps/until),
# each None = the pipeline's ``train``. Values are checked when merged into a TrainConfig.
TrainOverrides = create_model(
    "TrainOverrides",
    __config__=ConfigDict(extra="forbid", frozen=True),
    **{name: (f.annotation | None, None) for name, f in TrainConfig.model_fields.items() if name != "steps"},
)


class PipelineTrain(TrainConfig):
    """``train``: the trainer's defaults for every stage, and what the stage does around the loop."""

    # MLflow's system metrics (CPU, memory, disk, network; GPU where present) sampled on each stage's run while it
    # trains (tasks/registry/monitor.py); every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL s (MLflow's variable, default
    # 10). Not in any key: watching a stage changes nothing it computes
    system_metrics: bool = False


class RetryConfig(Strict):
    retries: int = Field(1, ge=0)  # Prefect task retries per stage (a retry resumes from the last checkpoint)
    delay_s: float = Field(10, ge=0)  # pause before a retry: give a flaky registry or disk a moment


class CheckpointConfig(Strict):
    every: int = Field(50, ge=0)  # steps between in-stage checkpoints (and one after the last); 0: none
    keep: int = Field(2, ge=1)  # newest checkpoints kept per stage


class StageCheckpoint(Strict):
    every: int | None = Field(None, ge=0)  # overrides checkpoint.every for this stage


class StageConfig(Strict):
    n_layers: int = Field(ge=1)
    steps: int | None = Field(None, ge=0, le=MAX_STEPS)  # 0 trains no step: the grown model is registered as it is
    until: UntilConfig = UntilConfig()  # a tokens budget or a loss-slope trigger, instead of `steps`
    growth: GrowthConfig = GrowthConfig()  # how this stage is made from the previous one (ignored for stage 1)
    optimizer: OptimizerConfig = OptimizerConfig()  # AdamW after growth: reset or transfer (ignored for stage 1)
    schedule: ScheduleConfig = ScheduleConfig()  # LR across growth: restart, continue or rewarm
    train: TrainOverrides = TrainOverrides()  # this stage's departures from the pipeline's `train`, e.g. {lr: 1e-3}
    checkpoint: StageCheckpoint = StageCheckpoint()
    # torchrun: strategy (ddp | fsdp), nproc per node, nnodes, rdzv_endpoint; train.batch_size stays the
    # global batch and must divide by nproc x nnodes. Not in the stage key.
    parallel: ParallelConfig | None = None
    nproc: int | None = Field(None, ge=1)  # shorthand for parallel: {strategy: ddp, nproc: N}
    init: InitConfig | None = None  # stage 1 only: import a local Hugging Face directory (registered as it is)
    data: StageData = StageData()  # this stage's mixture weights (data.sources)
    # its own flow run on this Prefect work pool, the job sized by job_variables (tasks/config/worker.py);
    # None: the pipeline's `worker`. Not in the stage key: where a stage runs does not change what it computes
    work_pool: str | None = Field(None, pattern=POOL_NAME)
    job_variables: dict[str, JsonValue] = {}  # over worker.job_variables, key by key
    # the pipeline's flow run pauses before this stage until a person resumes it in the Prefect UI (flows/approve.py);
    # not resumed within approve_timeout_s, the flow run fails. A registered stage is not asked about. Not in any key
    approve: bool = False
    approve_timeout_s: int = Field(86400, ge=1)  # a day: a person may be asleep; the parent holds its slot meanwhile

    @model_validator(mode="after")
    def _one_end_rule(self) -> StageConfig:
        rules = [self.steps is not None, self.until.tokens is not None, self.until.loss_slope is not None]
        if sum(rules) != 1:
            raise ValueError("set exactly one of steps, until.tokens and until.loss_slope")
        if self.nproc is not None and self.parallel is not None:
            raise ValueError("set parallel.nproc, not both nproc and parallel")
        return self

    def resolved_parallel(self) -> ParallelConfig:
        return self.parallel or ParallelConfig(nproc=self.nproc or 1)


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
    # val_loss | bpb (lower is better; bpb = val_loss / ln 2) | task:<name>[/<metric>]: a downstream score
    metric: str = Field("val_loss", pattern=r"^(val_loss|bpb|task:[A-Za-z0-9_.-]+(/[A-Za-z0-9_]+)?)$")
    margin: float = Field(0.01, ge=0)  # the candidate must beat the champion by more than this, in the metric's unit
    every_stage: bool = False  # gate every stage's version, not only the last one
    alias: str = Field("champion", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
    eval_batches: int = Field(8, ge=1)  # held-out set: this many fixed validation batches...
    batch_size: int = Field(16, ge=1)  # ...of this many sequences of the model's context
    prompt: str = "def "  # the fixed generation sample: seeded, so the same version always writes the same text
    sample_bytes: int = Field(64, ge=0, le=1 << 16)  # bounded: every gate writes it


class StageSpec(Strict):
    """Everything one stage needs, resolved: stage k of a pipeline (1-based)."""

    index: int
    seed: int
    model_name: str
    experiment: str
    model: ModelConfig
    tokenizer: TokenizerConfig = TokenizerConfig()  # the pipeline's; its sha256 is part of the stage key
    init: str | None = None  # stage 1 of an import: the HF directory (absolute); its weights' sha256 is in the key
    train: TrainConfig  # train.steps: the stage's step cap (steps, tokens / (batch x context), or max_steps)
    growth: GrowthConfig
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    until: UntilConfig = UntilConfig()
    total_steps: int | None = None  # planned steps of the whole pipeline; set only when the schedule reads it
    data: DataConfig
    checkpoint: CheckpointConfig = CheckpointConfig(every=0)  # cadence and pruning; not in the stage key
    parallel: ParallelConfig = ParallelConfig()  # torchrun processes, strategy (1: in the task); not in the key
    system_metrics: bool = False  # train.system_metrics: MLflow's system metrics on the stage's run; not in the key


class PipelineConfig(Strict):
    """Defaults are the demo: 3 -> 6 -> 12 layers, about five minutes on 2 CPU cores."""

    seed: int = 0
    retry: RetryConfig = RetryConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    storage: StorageConfig = StorageConfig()
    data: DataConfig = DataConfig()
    model: ArchConfig = Field(default_factory=default_section)
    tokenizer: TokenizerConfig = TokenizerConfig()  # default: the byte vocabulary
    train: PipelineTrain = PipelineTrain()
    registry: RegistryConfig = RegistryConfig()
    gate: GateConfig = GateConfig()
    worker: WorkerConfig = WorkerConfig()  # where stages run by default: in-process, or a Prefect work pool
    limits: LimitsConfig = LimitsConfig()  # caps on depth, sizes, processes and memory (tasks/config/limits.py)
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
    def _steps_belong_to_stages(cls, train: PipelineTrain) -> PipelineTrain:
        if "steps" in train.model_fields_set:
            raise ValueError("set steps per stage (stages.<i>.steps), not under train")
        return train

    @model_validator(mode="after")
    def _every_float_is_finite(self) -> PipelineConfig:
        # every float key, today's and tomorrow's, in one place: `train.lr: inf` would train into a NaN minutes later
        if bad := non_finite(self):
            raise ValueError("; ".join(f"{key}: Input should be a finite number" for key in bad))
        return self

    @model_validator(mode="after")
    def _tokens_come_from_documents(self) -> PipelineConfig:
        if self.tokenizer.kind != "bytes" and "bytes" in self.data.formats:
            raise ValueError(
                "tokenizer.train/path tokenize documents: set data.format to text, jsonl or parquet "
                "(data.format bytes feeds raw bytes)"
            )
        return self

    @model_validator(mode="after")
    def _init_on_stage_one_only(self) -> PipelineConfig:
        for i, stage in enumerate(self.stages):
            if stage.init is not None and i > 0:
                raise ValueError(f"stages.{i}.init: only stage 1 (stages.0) can start from a pretrained directory")
        first = self.stages[0]
        if first.init is not None and first.steps != 0:
            raise ValueError("stages.0: an imported stage registers the directory as it is: set stages.0.steps: 0")
        return self

    @model_validator(mode="after")
    def _stages_resolve_and_grow(self) -> PipelineConfig:
        check_shapes(self.stages, self.model, self.limits)  # before anything is sized by these numbers
        specs = self.stage_specs()  # raises on bad per-stage train overrides or model shapes
        check_fit(specs, self.limits)
        for prev, spec in zip(specs, specs[1:]):
            try:
                dry_run(spec.growth, prev.model, spec.model)
            except GrowthError as e:
                raise ValueError(f"stages.{spec.index - 1}: {e}") from None
        start = 0
        for spec in specs:  # one WSD curve across stages: its decay only in the final stage
            if spec.index > 1 and (why := growth_in_decay(spec.schedule, start, spec.total_steps or 0)):
                raise ValueError(f"stages.{spec.index - 1}.schedule: {why}")
            start += spec.train.steps
        return self

    @model_validator(mode="after")
    def _placements_resolve(self) -> PipelineConfig:
        self.placements()
        return self

    def placements(self) -> list[WorkerConfig | None]:
        """Where each stage runs: its work pool and job variables, or None for the pipeline's own flow run."""
        out = []
        for i, stage in enumerate(self.stages):
            try:
                out.append(WorkerConfig(work_pool=stage.work_pool, job_variables=stage.job_variables).over(self.worker))
            except ValueError as e:
                raise ValueError(f"stages.{i}: {e}") from None
        return out

    def stage_specs(self) -> list[StageSpec]:
        specs: list[StageSpec] = []
        model: ModelConfig | None = None
        tokenizer = self.tokenizer
        for k, stage in enumerate(self.stages, start=1):
            try:
                if model is None:
                    model, tokenizer = first_model(self.model, stage.n_layers, self.tokenizer, stage.init)
                else:  # derived from the previous stage: same widths, or doubled by a width stage
                    model = child_config(stage.growth, model, stage.n_layers)
                overrides = stage.train.model_dump(exclude_none=True)
                defaults = self.train.model_dump(exclude={"system_metrics"})
                train = TrainConfig(**{**defaults, **overrides, "steps": 0})
                cap = step_cap(stage.steps, stage.until, per_step := train.batch_size * model.context)
                if cap > MAX_STEPS:  # a tokens budget over small batches: the bound on steps holds for every rule
                    tokens = f"until.tokens {stage.until.tokens} is {cap} steps of {per_step} tokens (batch x context)"
                    raise ValueError(f"{tokens}, over {MAX_STEPS}")
                parallel = stage.resolved_parallel()
                if train.batch_size % parallel.world_size:
                    batch, n = train.batch_size, parallel.world_size
                    ranks = f"nproc {n}" if parallel.nnodes == 1 else f"nproc x nnodes = {n}"
                    raise ValueError(f"stages.{k - 1}: train.batch_size {batch} is not divisible by {ranks}")
                check_trainer(k, stage, train, parallel.world_size)
                every = self.checkpoint.every if stage.checkpoint.every is None else stage.checkpoint.every
                spec = StageSpec(
                    index=k,
                    seed=self.seed,
                    model_name=self.registry.model_name,
                    experiment=self.registry.experiment or self.registry.model_name,
                    model=model,
                    tokenizer=tokenizer,
                    init=str(Path(stage.init.from_pretrained).resolve()) if stage.init else None,
                    train=train.model_copy(update={"steps": cap}),
                    growth=stage.growth,
                    optimizer=stage.optimizer,
                    schedule=stage.schedule,
                    until=stage.until,
                    data=self.data.reweighed(stage.data.weights) if stage.data.weights else self.data,
                    checkpoint=self.checkpoint.model_copy(update={"every": every}),
                    parallel=parallel,
                    system_metrics=self.train.system_metrics,
                )
            except ValidationError as e:
                raise ValueError(f"stages.{k - 1}: {format_validation_error(e)}") from None
            except ValueError as e:
                raise ValueError(str(e) if str(e).startswith("stages.") else f"stages.{k - 1}: {e}") from None
            specs.append(spec)
        total = sum(s.train.steps for s in specs)  # only schedules that read it carry it: no needless cache misses
        return [s.model_copy(update={"total_steps": total}) if s.schedule.policy != "restart" else s for s in specs]
