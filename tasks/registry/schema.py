"""What the registry records, spelled in one place: every tag, alias, param, metric and artifact path.

    model version  tags VersionTags (lineage, integrity, idempotency) + ImportTags (an imported stage 1)
                   + GateTags + CardTags; alias stage-<k>
    stage run      the version's tags + RunTags; params StageParams; metrics METRICS; artifacts Artifacts
    parent run     RunTags(run_kind=pipeline, config_hash, prefect_flow_run_id); artifacts Artifacts

Typed models turn tags and params to and from MLflow's strings, so the rest of the code reads
``VersionTags.from_tags(mv.tags).stage_key`` and never a literal tag name.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

# ---- aliases -----------------------------------------------------------------------------------


def stage_alias(stage: int) -> str:
    """The alias of stage ``stage``'s newest version."""
    return f"stage-{stage}"


# ---- model version tags ------------------------------------------------------------------------


class _Tags(BaseModel):
    model_config = ConfigDict(frozen=True)
    prefix: ClassVar[str] = ""  # of every tag name of this group

    def to_tags(self) -> dict[str, str]:
        return {self.prefix + k: _encode(v) for k, v in self.model_dump().items()}

    @classmethod
    def from_tags(cls, tags: dict[str, str]):
        """The typed tags; None when a version carries none of them (e.g. never gated), or not all of the required
        ones yet (another process is setting them, one call per tag, right now)."""
        found = {k: tags[cls.prefix + k] for k in cls.model_fields if cls.prefix + k in tags}
        if not found or any(f.is_required() and k not in found for k, f in cls.model_fields.items()):
            return None
        return cls.model_validate({k: None if v == "" else v for k, v in found.items()})


def _encode(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6f}" if isinstance(value, float) else str(value)


class VersionTags(_Tags):
    """Lineage, integrity and idempotency of one registered stage."""

    stage: int
    n_layers: int
    parent_version: str | None  # None: the first stage
    weights_sha256: str  # of model.safetensors (sharded: of its index): names the parent in the next stage's key
    optimizer_sha256: str | None = None  # of optimizer.safetensors; None for versions registered without it
    # sha256 of staged-manifest.json, which lists every file of the version's directory (tasks/store/manifest.py):
    # verified before every load; set by registry.register. None (older versions): such a version is refused.
    manifest_sha256: str | None = None
    stage_key: str  # tasks.config.stage_key: a version with this key *is* the stage's result
    growth: str  # the operator that made it from its parent; "none" for the first stage
    data_cursor: int  # where the next stage's data stream starts
    global_step: int  # steps trained by this stage and all its ancestors
    config_hash: str
    code_version: str
    val_loss: float
    tokenizer_sha256: str | None = None  # models.data.tokenizer.sha256 of its tokenizer; None: the byte vocabulary
    # growth.freeze: "parent" when only the new blocks trained (LLaMA-Pro), or the mapping ("blocks parent;
    # embeddings false; head true": models.layermap.describe_freeze); None: none
    freeze: str | None = None
    trained: str | None = None  # with freeze: what trained ("blocks 4 9; embeddings"); None: everything
    # the depth map that made it: child block j's parent block, new copies starred ("0 1 2 3 3* 4 5 6 7 7*",
    # models.layermap.LayerMap.describe); None: the first stage, width growth, or a version from before this tag
    layer_map: str | None = None
    # data.sources: every source's cursor after this stage, and the mixture it trained on (weights by name),
    # as JSON; None for a one-corpus pipeline
    data_cursors: str | None = None
    data_mixture: str | None = None
    # tasks.config.eval_set_id of the held-out set ``val_loss`` was measured on in fp32; None (bf16 evaluation,
    # or a version from before this tag): the gate measures the version itself
    eval_set: str | None = None
    # processes x nodes x wall seconds of the stage (the attempt that registered it), up to its registration: what
    # its hardware was held for; None: registered before this tag
    gpu_seconds: float | None = None

    def source_cursors(self) -> dict[str, int]:
        return json.loads(self.data_cursors) if self.data_cursors else {}


IMPORTED = "imported"  # ImportTags.source of a version registered from a local Hugging Face directory


class ImportTags(_Tags):
    """A stage 1 that imported a local Hugging Face directory (``stages.0.init.from_pretrained``)."""

    source: str  # IMPORTED
    imported_from: str  # the directory, as given (absolute)
    imported_sha256: str  # of its safetensors as found there (tasks.store.imported_sha256)


class GateTags(_Tags):
    """The evaluation gate's decision on a version (tasks/gate.py)."""

    prefix: ClassVar[str] = "gate_"
    decision: str  # promoted | refused | kept
    reason: str
    metric: str
    margin: str
    val_loss: float
    bpb: float
    at: str
    bpt: float | None = None  # bits per token (= bpb for the byte vocabulary)
    champion_before: str | None
    champion_val_loss: float | None
    sample: str
    promoted_at: str | None = None  # set on promotion only: the champion history (tasks/publish/compare.py)
    replaced: str | None = None  # with promoted_at: the version it replaced ("" for none)
    eval_set: str | None = None  # tasks.config.eval_set_id of the figures above; a later gate on it reads them
    tokens: int | None = None  # held-out tokens predicted...
    bytes: int | None = None  # ...and the bytes of text they stand for

    def to_tags(self) -> dict[str, str]:
        """A refusal leaves an earlier promotion's ``promoted_at``/``replaced`` as they were."""
        tags = super().to_tags()
        if self.promoted_at is None:
            tags = {k: v for k, v in tags.items() if k not in ("gate_promoted_at", "gate_replaced")}
        return tags


class CardTags(_Tags):
    model_card: str  # artifact URI of the card
    git_commit: str
    data_config: str  # the DataConfig as JSON (staged eval reads the version's own data)


# ---- runs --------------------------------------------------------------------------------------

PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag


class RunTags(_Tags):
    run_kind: str | None = None  # "pipeline" on the parent run
    config_hash: str | None = None
    prefect_flow_run_id: str | None = None
    prefect_task_run_id: str | None = None

    def to_tags(self) -> dict[str, str]:
        return {k: v for k, v in super().to_tags().items() if v}


PIPELINE_RUN = "pipeline"


def stage_run_name(stage: int) -> str:
    return f"stage-{stage}"


class StageParams(BaseModel):
    """A stage run's params: what it trained, how, and on which data."""

    model_config = ConfigDict(frozen=True)

    steps: int
    params: int
    nproc: int
    model: dict[str, Any]  # the family's model config fields (ModelConfig), logged flat: arch, n_layers, d_model, ...
    train: dict[str, Any]  # TrainConfig fields, logged as train.<name>
    data: dict[str, Any] = {}  # source, corpus_sha256, cursor_start, cursor_end, logged as data.<name>

    def to_params(self) -> dict[str, str]:
        flat = {"steps": self.steps, "params": self.params, "nproc": self.nproc, **self.model}
        flat |= {f"train.{k}": v for k, v in self.train.items()} | {f"data.{k}": v for k, v in self.data.items()}
        return {k: str(v) for k, v in flat.items()}

    @classmethod
    def read(cls, params: dict[str, str]) -> StageParams:
        def part(prefix: str) -> dict[str, str]:
            return {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}

        model = {k: v for k, v in params.items() if "." not in k and k not in ("steps", "params", "nproc")}
        return cls(
            steps=int(params["steps"]),
            params=int(params.get("params", 0)),
            nproc=int(params.get("nproc", 1)),
            model=model,
            train=part("train."),
            data=part("data."),
        )


class Metrics:
    TRAIN_LOSS, VAL_LOSS, VAL_LOSS_INIT = "train_loss", "val_loss", "val_loss_init"
    TOKENS_PER_S, STEP_TIME_S = "tokens_per_s", "step_time_s"
    GPU_SECONDS = "gpu_seconds"  # a stage run's; on the parent run, the pipeline's total (this run's stages)
    # on the parent run: one allocation sized for the largest stage (its processes x nodes), held for the whole run
    GPU_SECONDS_ONE_ALLOCATION = "gpu_seconds_one_allocation"
    MFU, PEAK_MEMORY = "mfu", "peak_memory_bytes"  # against the device's peak (models/train/speed.py); rank 0's peak
    EVAL_PREFIX = "eval/"

    @staticmethod
    def source_val_loss(source: str) -> str:
        """A mixture source's own validation loss (data.sources), at the stage's end."""
        return f"val_loss/{source}"

    @staticmethod
    def source_share(source: str) -> str:
        """The share of the stage's train sequences a mixture source gave (measured, not the weight)."""
        return f"data_share/{source}"

    @staticmethod
    def eval_metric(task: str, metric: str) -> str:
        """A downstream task's score (staged eval --tasks, lm-evaluation-harness)."""
        return f"{Metrics.EVAL_PREFIX}{task}/{metric}"


class Artifacts:
    """Artifact paths on a stage run (and the pipeline's parent run)."""

    MODEL = "model"  # the version's source: model.safetensors, config.json, the pyfunc files
    CARD_DIR, CARD = "card", "card/MODEL_CARD.md"  # + card/loss.png
    GATE = "gate/gate.md"
    SUMMARY_DIR, SUMMARY = "summary", "summary/summary.md"  # + summary/<model>-loss.png
    COMPARISON = "compare/comparison.md"
    PIPELINE_CONFIG, STAGE_CONFIG = "config/pipeline.yaml", "config/stage.yaml"

    @staticmethod
    def failure(stage: int) -> str:
        return f"failures/stage-{stage}.md"


DATASET_CURSOR_START, DATASET_CURSOR_END = "cursor_start", "cursor_end"  # tags on a stage run's dataset input


# ---- the gate's lease (tasks/registry/lease.py) --------------------------------------------------

LEASE_MODEL = "staged.leases"  # a registered model whose versions are tickets, never a model
LEASE_DESCRIPTION = "Leases of the staged-training gates: each version is one ticket (tasks/registry/lease.py)."


class LeaseTags(_Tags):
    """A ticket: which lease it waits for or holds, whose it is, and until when it is valid."""

    prefix: ClassVar[str] = "lease_"
    name: str  # <model>@<alias>: one lease per alias a gate moves
    owner: str  # host:pid, for people
    expires: float  # unix time; a ticket past it belongs to a dead holder and is deleted

    @classmethod
    def renewal(cls, expires: float) -> tuple[str, str]:
        """(tag, value) that moves a ticket's expiry."""
        return cls.prefix + "expires", _encode(expires)


def lease_filter(name: str) -> str:
    return f"name = '{LEASE_MODEL}' and tags.lease_name = '{name}'"


# ---- searches ----------------------------------------------------------------------------------


def versions_filter(model_name: str, stage_key: str | None = None) -> str:
    """search_model_versions filter: every version of ``model_name``, or the one with ``stage_key``."""
    found = f"name = '{model_name}'"
    return found + (f" and tags.stage_key = '{stage_key}'" if stage_key else "")


def stage_runs_filter(stage_key: str) -> str:
    return f"tags.stage_key = '{stage_key}'"


def stage_key_tags(stage_key: str) -> dict[str, str]:
    """The one tag a stage's run carries from the moment it is created for training (tasks/registry/monitor.py):
    what ``stage_runs_filter`` finds, so that an attempt that dies leaves an orphan ``delete_orphans`` can find."""
    return {"stage_key": stage_key}


def open_pipeline_runs_filter(config_hash: str) -> str:
    return (
        f"tags.run_kind = '{PIPELINE_RUN}' and tags.config_hash = '{config_hash}' and attributes.status != 'FINISHED'"
    )
