"""Data parallelism inside a stage, pure torch.distributed: DDP, or FSDP2 over a model's list of blocks.

    shard(model, device)               FSDP2 in place: fully_shard per transformer block, then at the root
    net = data_parallel(model, device)  what runs the forward pass: the sharded model, a DDP wrapper, or the model
    full_state(model)                   the whole state dict on rank 0 (gathered to CPU), {} elsewhere
    load_full_state(model, state)       a whole state dict into a sharded model (each rank keeps its shards)
    export_moments / load_moments       AdamW moments by parameter name (models.train.optim layout), full or sharded

FSDP2 turns every parameter into a DTensor sharded along dim 0 over the ranks: each rank stores 1/N
of the parameters, gradients and AdamW moments, all-gathers a block's parameters just before its
forward (and backward) and frees them after; gradients are reduce-scattered (averaged), so the
update is a one-process step's on the global batch, up to float summation order. On CUDA with
``train.precision: bf16`` the gathered parameters are bf16 (compute) while the reduction and the
sharded master weights stay float32; otherwise (and on CPU, gloo) everything stays float32.

Parameter names do not change under fully_shard (no wrapper modules), so growth operators, state
dicts and the moments layout are the same as in one process; the conversions between full and
sharded state go through torch.distributed.checkpoint.state_dict's helpers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import NoReturn

import torch
import torch.distributed as dist
import torch.nn as nn

from models.families.lookup import family_of
from models.growth_moments import param_steps, step_entries
from models.train.optim import StateDict, check_moments
from models.train.optim import export_moments as _export_full
from models.train.optim import load_moments as _load_full

# torch.distributed's FSDP, DTensor and state-dict modules take ~1.7 s to import: only processes that
# shard (torchrun ranks of an FSDP stage) import them, inside the functions below.


def _state_dict_api():
    from torch.distributed.checkpoint import state_dict

    return state_dict


def _full():
    """Options of a whole state dict, gathered to CPU on rank 0 only."""
    return _state_dict_api().StateDictOptions(full_state_dict=True, cpu_offload=True)


def is_sharded(model: nn.Module) -> bool:
    fsdp = sys.modules.get("torch.distributed.fsdp")  # not imported: nothing can be sharded
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


def evaluated(model: nn.Module, value: float) -> float:
    """After a forward pass with no backward (evaluation): free the gathered parameters again. FSDP2 keeps
    the root's unsharded after its forward, expecting a backward; the state-dict helpers need shards."""
    if is_sharded(model):
        model.reshard()
    return value


def shard(model: nn.Module, device: torch.device, bf16: bool = False) -> nn.Module:
    """FSDP2 over the default process group: each of the family's units (its blocks) is one all-gather unit,
    the root holds the rest (embeddings, final norm, head). ``bf16`` (train.precision) on CUDA: gathered
    parameters in bf16, gradients reduced in float32 (on CPU/gloo everything stays float32)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model.to(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    cuda = device.type == "cuda" and bf16
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cuda else None
    kwargs = {"mesh": mesh, **({"mp_policy": policy} if policy else {})}
    for block in family_of(model).fsdp_units(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """What runs the forward pass: a sharded model runs itself; in a group of > 1 processes a replicated
    model gets DDP (all-reduced gradients); alone, the model itself."""
    if is_sharded(model) or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def full_state(model: nn.Module) -> StateDict:
    """The plain state dict: gathered onto rank 0's CPU when sharded (collective; {} on other ranks)."""
    if not is_sharded(model):
        return {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    return _state_dict_api().get_model_state_dict(model, options=_full())


def load_full_state(model: nn.Module, state: StateDict) -> None:
    """A whole (unsharded) state dict, present on every rank, into a sharded model: each rank keeps its shards.
    Taken in the model's key order on every rank: the helper runs one collective per tensor, in dict order,
    and a dict read from safetensors has a per-process order (its header is a hash map)."""
    ordered = {k: state[k] for k in model.state_dict() if k in state} | state  # extra keys stay, strict refuses them
    api = _state_dict_api()
    api.set_model_state_dict(model, ordered, options=api.StateDictOptions(full_state_dict=True, strict=True))


def sharded_state(model: nn.Module) -> StateDict:
    """Each rank's shards, as DTensors by parameter name (what an in-stage checkpoint writes)."""
    return _state_dict_api().get_model_state_dict(model)


def load_sharded_state(model: nn.Module, state: StateDict) -> None:
    """DTensor shards laid out like the model's own (read back from a checkpoint) into the model."""
    api = _state_dict_api()
    api.set_model_state_dict(model, state, options=api.StateDictOptions(strict=True))


def export_moments(model: nn.Module, optimizer: torch.optim.Optimizer, *, full: bool = True) -> StateDict:
    """AdamW moments by parameter name. Replicated model: models.train.optim.export_moments. Sharded: with
    ``full`` gathered onto rank 0 ({} elsewhere; collective), else each rank's DTensor shards. A parameter
    never stepped gets zeros, as in one process."""
    if not is_sharded(model):
        return _export_full(model, optimizer)
    api = _state_dict_api()
    options = _full() if full else api.StateDictOptions()
    state = api.get_optimizer_state_dict(model, optimizer, options=options).get("state", {})  # collective
    if full and dist.get_rank() != 0:
        return {}
    out: StateDict = {}
    steps: dict[str, float] = {}
    for name, p in model.named_parameters():
        st = state.get(name, {})
        zeros = torch.zeros(p.shape, dtype=p.dtype) if full else torch.zeros_like(p)
        for k in ("exp_avg", "exp_avg_sq"):
            out[f"{k}.{name}"] = st[k].detach().clone() if st else zeros.clone()
        steps[name] = float(st["step"]) if st else 0.0
    return {**out, **step_entries(steps)}


def load_moments(model: nn.Module, optimizer: torch.optim.Optimizer, moments: StateDict) -> None:
    """Install moments strictly (every parameter, right shapes, nothing extra). Into a sharded model: its
    own DTensor shards (a resumed checkpoint) directly, or full tensors (grown from the parent, present on
    every rank) through set_optimizer_state_dict, which keeps each rank's shards."""
    if is_sharded(model):
        from torch.distributed.tensor import DTensor

        whole = not any(isinstance(v, DTensor) for v in moments.values())
    if not is_sharded(model) or not whole:
        _load_full(model, optimizer, moments)
        return
    check_moments(model, moments)
    params = dict(model.named_parameters())
    steps = param_steps(moments, params)
    api = _state_dict_api()
    osd = api.get_optimizer_state_dict(model, optimizer)  # its param_groups name the parameters
    osd["state"] = {  # a parameter at step 0 gets no state (a fresh start, as in one process); a frozen one none at all
        name: {
            "step": torch.tensor(s, dtype=torch.float32),
            "exp_avg": moments[f"exp_avg.{name}"],
            "exp_avg_sq": moments[f"exp_avg_sq.{name}"],
        }
        for name, s in steps.items()
        if s != 0 and params[name].requires_grad
    }
    api.set_optimizer_state_dict(
        model, optimizer, osd, options=api.StateDictOptions(full_state_dict=True, strict=False)
    )
    for name, p in params.items():  # the helper initialised every state (a zero step): step-0 ones are fresh
        if steps[name] == 0:
            optimizer.state.pop(p, None)


def _device() -> torch.device:
    """Where a collective's tensors must live: the rank's GPU under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_json(value) -> list:
    """Every rank's JSON-able ``value``, on every rank, as bytes in uint8 tensors (nothing pickled)."""
    device, world = _device(), dist.get_world_size()
    data = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8).to(device)
    size = torch.tensor([data.numel()], device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: data.numel()] = data
    out = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return [json.loads(o[: int(s.item())].cpu().numpy().tobytes()) for o, s in zip(out, sizes)]


def end_rank(code: int) -> NoReturn:
    """Leave the process group, flush, and end this rank at once with ``code``, skipping interpreter teardown.

    Why not a plain return: ``destroy_process_group`` does not free a gloo group that something still
    references, and under FSDP2 torch's DTensor keeps the DeviceMesh (hence the group) in module-level
    sharding caches that nothing public clears. The group's native threads (``gloo_tcp_loop``, two
    ``pt_gloo_runloop``) then live until interpreter finalization, whose teardown destroys the group from
    the main thread with no Python frame left and, about 1 run in 15 (measured, two ranks of a plain
    4-layer ``fully_shard`` model on CPU), aborts with ``terminate called without an active exception``:
    a SIGABRT after the work was done, which fails the whole stage. Ending with ``os._exit`` after the
    group is destroyed and every stream is flushed runs no such teardown: 0 aborts in the same runs
    (bench/scripts/stress_torchrun.py counts them through the real stage launch).
    """
    if dist.is_initialized():
        dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
