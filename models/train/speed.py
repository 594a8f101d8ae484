"""Throughput, model FLOPs utilisation and peak memory of a training run: the arithmetic, nothing trained.

    peak = peak_flops(device)            # FLOP/s one device can do: CUDA's named bf16 dense peak, else measured
    mfu(tokens_per_s, flops_per_token, peak, world)   # achieved / available, PaLM's definition
    peak_memory_bytes(device)            # CUDA max_memory_allocated; CPU the process's max RSS

FLOPs per token come from the family (models/families/family.py: 6 x matmul weights + attention), so MFU counts
the model's work, not recomputation: activation checkpointing lowers MFU, as in the PaLM paper.
"""

from __future__ import annotations

import functools
import resource
import sys
import time

import torch

# Dense bf16 tensor-core peaks from the vendors' data sheets (no sparsity), by a substring of the device name.
NAMED_BF16_PEAK = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is lower (756 TFLOPS) and is matched first below
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
}
_PCIE = {"H100 PCIe": 756e12}


def named_peak(name: str) -> float | None:
    """The data-sheet bf16 peak of a CUDA device by name, or None for a device not in the table."""
    for table in (_PCIE, NAMED_BF16_PEAK):
        for key, peak in table.items():
            if key in name:
                return peak
    return None


@functools.cache
def measured_peak(device_type: str, size: int = 1024, repeats: int = 8) -> float:
    """FLOP/s of a square matmul on this device, the best of ``repeats``; measured once per process (cached):
    float32 on CPU (what its training computes), bf16 on CUDA."""
    dtype = torch.bfloat16 if device_type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device_type, dtype=dtype)
    b = torch.randn(size, size, device=device_type, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first one warms up
        if device_type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        a @ b
        if device_type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - began)
    return 2.0 * size**3 / best


def peak_flops(device: torch.device) -> float:
    """The FLOP/s MFU is measured against: a CUDA device's named bf16 peak, or a measured matmul peak."""
    if device.type == "cuda":
        named = named_peak(torch.cuda.get_device_name(device))
        if named is not None:
            return named
    return measured_peak(device.type)


def mfu(tokens_per_s: float, flops_per_token: float, peak: float, world: int = 1) -> float:
    """Model FLOPs utilisation: the model's training FLOP/s over ``world`` devices' peak."""
    return tokens_per_s * flops_per_token / (peak * world) if peak > 0 else 0.0


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: the most bytes torch had allocated on the device (since the last reset); CPU: this process's
    maximum resident set size (the whole process, never reset)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux
