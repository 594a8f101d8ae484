"""The pipeline config: one pydantic tree (schema.py), its YAML / --set loading (load.py), its hashes (identity.py).

The door of this room: import these names from ``tasks.config``.
"""

from tasks.config.identity import code_version, eval_set_id, pipeline_hash, spec_hash, stage_key
from tasks.config.load import ConfigError, apply_override, load_config, read_yaml, resolve_config
from tasks.config.model_section import ArchConfig, InitConfig
from tasks.config.parallel import ParallelConfig
from tasks.config.schema import (
    CheckpointConfig,
    GateConfig,
    PipelineConfig,
    RegistryConfig,
    RetryConfig,
    StageConfig,
    StageSpec,
    StorageConfig,
    format_validation_error,
)
from tasks.config.worker import WorkerConfig

__all__ = [
    "ArchConfig",
    "InitConfig",
    "CheckpointConfig",
    "ConfigError",
    "GateConfig",
    "ParallelConfig",
    "PipelineConfig",
    "RegistryConfig",
    "RetryConfig",
    "StageConfig",
    "StageSpec",
    "StorageConfig",
    "WorkerConfig",
    "apply_override",
    "code_version",
    "eval_set_id",
    "format_validation_error",
    "load_config",
    "pipeline_hash",
    "read_yaml",
    "resolve_config",
    "spec_hash",
    "stage_key",
]
