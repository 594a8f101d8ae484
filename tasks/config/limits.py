"""Upper bounds on what a config may ask of this machine, checked before anything is built.

    check_shapes(stages, model, limits)   # layers, context, width: cheap, before the stages resolve
    check_fit(specs, limits)              # processes and the analytic memory estimate (the family's footprint)

A deployment makes every config remotely triggerable, so a config that would hang validation
(``n_layers: 1000000``), allocate for minutes before failing (a huge ``context`` or ``d_model``), spawn
any number of processes (``nproc``) or not fit in memory is refused here, in one line. Each cap is a
``limits`` key, so a bigger machine raises it on purpose.
"""

from __future__ import annotations

import os

import torch
from pydantic import BaseModel, ConfigDict, Field

from models.families.lookup import family_of
from models.growth import layer_map
from models.layermap import trainable
from models.train.step import trained_share


class LimitsConfig(BaseModel):
    """``limits``: the caps. Not part of any stage key or pipeline hash: they decide what runs, not what it computes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_layers: int = Field(256, ge=1)  # per stage
    max_context: int = Field(16384, ge=1)  # bytes (positions) per sequence
    max_d_model: int = Field(16384, ge=1)  # after any width growth
    max_nproc: int | None = Field(None, ge=1)  # None: this machine's usable cores, or its GPUs with CUDA
    memory_bytes: int | None = Field(None, ge=1)  # None: this machine's RAM, or one GPU's memory with CUDA


def _uses_cuda(device: str) -> bool:
    import torch

    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def machine_procs(cuda: bool) -> int:
    """Processes a stage may use here: one per GPU with CUDA, else one per usable core."""
    if cuda:
        import torch

        return torch.cuda.device_count()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_memory(cuda: bool) -> int:
    """Bytes one training process may count on: one GPU's memory with CUDA, else the machine's RAM."""
    if cuda:
        import torch

        return torch.cuda.get_device_properties(0).total_memory
    import psutil

    return psutil.virtual_memory().total


def check_shapes(stages, model, limits: LimitsConfig) -> None:
    """The raw config's depths and sizes against the caps (ValueError, one line, naming the key)."""
    for i, stage in enumerate(stages):
        if stage.n_layers > limits.max_layers:
            raise ValueError(f"stages.{i}.n_layers {stage.n_layers} exceeds limits.max_layers {limits.max_layers}")
    if model.context > limits.max_context:
        raise ValueError(f"model.context {model.context} exceeds limits.max_context {limits.max_context}")
    if model.d_model > limits.max_d_model:
        raise ValueError(f"model.d_model {model.d_model} exceeds limits.max_d_model {limits.max_d_model}")


def check_trainer(k: int, stage, train, world: int) -> None:
    """Stage ``k``'s trainer settings that only make sense with its processes and its parent (one line each)."""
    if train.micro_batch_size is not None and (train.batch_size // world) % train.micro_batch_size:
        raise ValueError(
            f"stages.{k - 1}: train.micro_batch_size {train.micro_batch_size} does not divide the per-rank batch "
            f"{train.batch_size // world} (batch_size {train.batch_size} over {world} processes)"
        )
    if stage.growth.freeze != "none":
        what = stage.growth.freeze if stage.growth.freeze == "parent" else "a freeze mapping"
        if k == 1:
            raise ValueError(f"stages.0.growth.freeze: {what} needs a parent: stage 1 has none")
        if (op := stage.growth.operator) in ("width", "upcycle"):
            changes = "every weight" if op == "width" else "every MLP"
            raise ValueError(f"stages.{k - 1}.growth.freeze: {what} needs a depth operator ({op} changes {changes})")


def activations(family, spec, micro: int) -> int:
    """Bytes kept for backward by one micro batch: all of them, or with activation checkpointing each block's
    input plus one block recomputed at a time; bf16 autocast keeps them in half the bytes."""
    act = family.footprint(spec.model, micro).activations
    if spec.train.activation_checkpointing == "full":
        n = spec.model.n_layers
        act = act // n + n * micro * spec.model.context * spec.model.d_model * 4
    return act // 2 if spec.train.precision == "bf16" else act


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _trained_share(spec, parent) -> float:
    """The share of the stage's parameters that train (models.train.step.trained_share, on the meta device)."""
    if parent is None or spec.growth.freeze == "none":
        return 1.0
    family = family_of(spec.model)
    t = trainable(spec.growth.freeze, layer_map(spec.growth, parent.model.n_layers, spec.model.n_layers))
    with torch.device("meta"):
        return trained_share(family.build(spec.model), family, t)


def check_fit(specs, limits: LimitsConfig) -> None:
    """Each resolved stage against the process cap and the memory it needs (its processes on this node, each with
    the model, gradients and AdamW moments, or 1/world of them under FSDP, and its slice of the batch's
    activations)."""
    for parent, spec in zip([None, *specs], specs):
        where = f"stages.{spec.index - 1}"
        if spec.model.d_model > limits.max_d_model:  # a width stage doubled it
            raise ValueError(f"{where}: d_model {spec.model.d_model} exceeds limits.max_d_model {limits.max_d_model}")
        cuda, par = _uses_cuda(spec.train.device), spec.parallel
        procs = limits.max_nproc or max(machine_procs(cuda), 1)
        if par.nproc > procs:  # per node: one process per GPU, or per core (more only time-slice a CPU)
            source = "limits.max_nproc" if limits.max_nproc else ("GPUs" if cuda else "usable CPU cores")
            raise ValueError(f"{where}.parallel.nproc {par.nproc} exceeds {procs} ({source})")
        family = family_of(spec.model)
        state = family.footprint(spec.model, 0)  # weights, gradients, AdamW: sharded across the ranks under FSDP
        shards = par.world_size if par.strategy == "fsdp" else 1
        share = _trained_share(spec, parent)  # growth.freeze: frozen parameters keep no gradients and no moments
        per_rank = (state.weights + int((state.grads + state.optimizer) * share)) // shards
        micro = spec.train.micro_batch_size or spec.train.batch_size // par.world_size
        per_rank += activations(family, spec, micro)
        need = per_rank if cuda else per_rank * par.nproc  # on CPU every rank on this node shares its memory
        have = limits.memory_bytes or machine_memory(cuda)
        if need > have:
            source = "limits.memory_bytes" if limits.memory_bytes else ("one GPU" if cuda else "this machine's RAM")
            raise ValueError(
                f"{where}: training needs about {_gib(need)} (weights, gradients, AdamW, activations of micro batch "
                f"{micro} x {spec.model.context}) but {source} is {_gib(have)}"
            )
