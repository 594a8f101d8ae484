"""A registered stage 1 made by hand, for tests that need a version without training one."""

from __future__ import annotations

from tasks.registry.schema import StageParams, VersionTags


def stage1_tags(weights_sha256: str, stage_key: str, **extra) -> VersionTags:
    """The tags of an untrained 3-layer stage 1 with these weights and key (``extra``: any other tag)."""
    fields = dict(stage=1, n_layers=3, parent_version=None, growth="none", data_cursor=0, global_step=0)
    fields |= dict(config_hash="c", code_version="v", val_loss=5.0)
    return VersionTags(weights_sha256=weights_sha256, stage_key=stage_key, **fields | extra)


def stage_params(spec) -> StageParams:
    """The run params of an untrained stage of ``spec``."""
    return StageParams(steps=0, params=1, nproc=1, model=spec.model.model_dump(), train=spec.train.model_dump())
