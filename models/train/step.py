"""The mechanics of one training step, torch's own tools only; models/train/loop.py's loop calls them.

    with autocast(device, "bf16"): ...           # torch.autocast: bf16 compute, float32 master weights
    with checkpointed(model, family, "full"):    # torch.utils.checkpoint around each of the family's blocks
    net = compiled(net, True, log)               # torch.compile, or the eager module when no compiler is here
    with frozen(model, family, trainable):       # only these blocks (embeddings, head) train: the rest gets no gradient
    loss = accumulate(net, model, family, x, y, micro)   # forward + backward over micro batches, grads summed

Gradient accumulation keeps ``batch_size`` the global batch of one optimizer step (litgpt, torchtitan): each
rank's slice of it is cut into micro batches of ``micro_batch_size`` sequences, each micro loss is scaled by
1/n so the summed gradient is the whole slice's mean; DDP all-reduces and FSDP2 reduce-scatters on the last
micro batch only (``no_sync`` / ``set_requires_gradient_sync(False)`` before it).
"""

from __future__ import annotations

import contextlib
import functools
import shutil
from collections.abc import Callable, Iterator

import torch
import torch.utils.checkpoint
from torch import nn

from models.families.family import Family, token_loss
from models.layermap import Trainable
from models.train import parallel


def autocast(device: torch.device, precision: str):
    """bf16: autocast on CUDA or CPU (matmuls in bf16, the weights stay float32); fp32: nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def checkpointed(model: nn.Module, family: Family, mode: str) -> Iterator[None]:
    """``full``: each checkpoint unit's forward runs under non-reentrant torch.utils.checkpoint, so its
    activations are recomputed in the backward pass instead of kept. The forward is set on the instance
    (what checkpoint_wrapper does, without renaming any parameter): state dicts, moments and FSDP2's
    hooks, which stay outside the checkpointed forward, see the model as it is. Undone on exit."""
    units = family.checkpoint_units(model) if mode == "full" else []
    for unit in units:
        unit.forward = functools.partial(torch.utils.checkpoint.checkpoint, unit.forward, use_reentrant=False)
    try:
        yield
    finally:
        for unit in units:
            del unit.forward  # back to the class's forward


def compiler_missing(device: torch.device) -> str | None:
    """Why torch.compile cannot run here, or None: inductor needs a C++ compiler on CPU, triton on CUDA."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed"
        return None
    if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang", "c++", "g++")):
        return "no C++ compiler on PATH"
    return None


def compiled(net: nn.Module, enabled: bool, device: torch.device, log: Callable[[str], None] = print) -> nn.Module:
    """torch.compile(net) when asked and possible; otherwise the eager module, with one line saying why."""
    if not enabled:
        return net
    missing = compiler_missing(device)
    if missing is not None:
        log(f"train.compile: {missing}; training eagerly")
        return net
    return torch.compile(net)


@contextlib.contextmanager
def frozen(model: nn.Module, family: Family, trainable: Trainable | None) -> Iterator[None]:
    """With ``trainable``, every parameter outside it (the other blocks; the embeddings and the final norm and
    head unless it names them) gets ``requires_grad=False`` for the duration: no gradient, and the loop's AdamW
    holds no state for it. Set before DDP or FSDP2 first run the model, so both leave those parameters out of
    the reduction (FSDP2 keeps a unit with frozen and trained parameters, the root's, as one group)."""
    if trainable is None:
        yield
        return
    layout = family.layout
    blocks = tuple(f"{layout.block_prefix}{j}." for j in trainable.blocks)
    params = list(model.named_parameters())
    for name, p in params:
        if name.startswith(layout.block_prefix):
            p.requires_grad_(name.startswith(blocks))
        else:
            p.requires_grad_(trainable.embeddings if name.startswith(layout.embeddings) else trainable.head)
    try:
        yield
    finally:
        for _, p in params:
            p.requires_grad_(True)


def trained_share(model: nn.Module, family: Family, trainable: Trainable | None) -> float:
    """The share of ``model``'s parameters that train under ``trainable`` (1 for None): the part that keeps
    gradients and AdamW moments. Works on a meta-device model: nothing is allocated."""
    with frozen(model, family, trainable):
        sizes = [(p.numel(), p.requires_grad) for p in model.parameters()]
    return sum(n for n, on in sizes if on) / sum(n for n, _ in sizes)


def _no_sync(net: nn.Module, model: nn.Module, sync: bool):
    """Skip the gradient reduction of a non-final micro batch (DDP's no_sync, FSDP2's requires-sync flag)."""
    if parallel.is_sharded(model):
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    inner = getattr(net, "_orig_mod", net)  # a compiled DDP: its no_sync
    if sync or not isinstance(inner, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return inner.no_sync()


def accumulate(
    net: nn.Module,
    model: nn.Module,
    family: Family,
    x: torch.Tensor,
    y: torch.Tensor,
    micro: int | None,
    precision: str,
) -> torch.Tensor:
    """Forward and backward of this rank's slice (x, y) in micro batches of ``micro`` sequences (None: one);
    gradients accumulate into ``.grad``. Returns the slice's mean loss, detached (the mean of equal micro
    batches' means). The caller zeroes the gradients before and steps after."""
    n = 1 if micro is None else x.size(0) // micro
    total = torch.zeros((), device=x.device)
    for i, (xs, ys) in enumerate(zip(x.chunk(n), y.chunk(n))):
        with _no_sync(net, model, sync=i == n - 1):  # around the backward too: that is where DDP reduces
            with autocast(x.device, precision):
                loss = token_loss(family.logits(net, xs), ys) / n
            loss.backward()
        total += loss.detach()
    return total
