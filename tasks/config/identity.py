"""What names a stage and a pipeline: content hashes of configs and of the model code.

    stage_key(spec, parent_sha256, tokenizer_sha256)
        = sha256(spec hash | parent weights sha256 | code version [| tokenizer sha256])

The parent's sha256 is that of an imported directory's weights for an import stage. The tokenizer's is left
out for the byte vocabulary (a constant of the code, named by the spec's ``tokenizer`` section alone).

A registered version carrying a stage's key *is* that stage's result (idempotent reruns).
"""

from __future__ import annotations

import ast
import hashlib
import json
from functools import cache
from pathlib import Path

import models
from models.data.bytes import DataConfig
from tasks.config.schema import PipelineConfig, StageSpec

# What a stage computes does not depend on these: checkpoint cadence changes nothing in the weights,
# parallel (ddp or fsdp, processes, nodes) keeps the global batch and steps (the same weights up to
# float summation order, and with dropout > 0 other dropout masks). Where an imported directory or a
# tokenizer file lives does not matter either: their contents are in the key, by sha256.
# Nor does watching a stage train (MLflow's system metrics).
_NOT_COMPUTATION = {
    "checkpoint": True,
    "parallel": True,
    "init": True,
    "tokenizer": {"path"},
    "system_metrics": True,
}


def spec_hash(spec: StageSpec) -> str:
    return hashlib.sha256(spec.model_dump_json(exclude=_NOT_COMPUTATION).encode()).hexdigest()


def pipeline_hash(config: PipelineConfig) -> str:
    """Short hash of the whole resolved config but its ``limits`` (they change what may run, not what runs) and
    where stages run (``worker``, ``stages.<i>.work_pool``), whether a person approves them (``stages.<i>.approve``)
    and whether they are watched (``train.system_metrics``): names the pipeline in Prefect (flow run) and MLflow
    (parent run)."""
    where = {"work_pool", "job_variables", "approve", "approve_timeout_s"}
    exclude = {"limits": True, "worker": True, "train": {"system_metrics"}, "stages": {"__all__": where}}
    return hashlib.sha256(config.model_dump_json(exclude=exclude).encode()).hexdigest()[:8]


def _code_only(source: str) -> str:
    """A module's syntax tree without docstrings: comments, docstrings and formatting do not count."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


@cache
def code_version() -> str:
    """Hash of the model code (every ``.py`` under ``models/``, in every subfolder, as syntax trees): a change to
    how weights are computed changes every stage key; an edited comment or docstring, or reformatting, does not.
    A module is named by its path under ``models/``, so moving it to another room changes the keys once."""
    return tree_version(Path(models.__file__).parent)


def tree_version(root: Path) -> str:
    """The hash ``code_version`` takes of one package folder, recursively."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root).as_posix()
        h.update(name.encode() + b"\0" + _code_only(path.read_text()).encode() + b"\0")
    return h.hexdigest()[:16]


def stage_key(spec: StageSpec, parent_sha256: str | None, tokenizer_sha256: str | None = None) -> str:
    parts = [spec_hash(spec), parent_sha256 or "", code_version()] + ([tokenizer_sha256] if tokenizer_sha256 else [])
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def eval_set_id(
    data: DataConfig, seed: int, context: int, tokenizer_sha256: str | None, batches: int, batch_size: int
) -> str:
    """Names a held-out evaluation in fp32: the same id means the same validation batches and the same code,
    so the same loss. A stage records the id of its final evaluation (a ``VersionTags`` tag) and the gate of
    its own (a ``GateTags`` tag): a gate whose set a version was already measured on reads the figure."""
    what = [data.model_dump_json(), seed, context, tokenizer_sha256, batches, batch_size, code_version()]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]
