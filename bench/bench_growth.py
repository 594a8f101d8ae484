"""How long each growth operator takes on a 12-layer, d_model 512 state dict (weights and Adam moments).

    PYTHONPATH=. python bench/bench_growth.py

Depth operators grow 12 -> 24 layers; width doubles 512 -> 1024 (4x the parameters). The number
printed is the best of a few runs, growth only (no model construction, no I/O). Growth is memory
bound, so it runs on one thread (set OMP_NUM_THREADS for more): on shared cores, idle OpenMP threads
spin against other jobs and make every operator several times slower.
"""

from __future__ import annotations

import os
import time

import torch

from models.gpt import GPT, GPTConfig
from models.growth import GrowthConfig, child_config, grow, grow_moments

PARENT = GPTConfig(n_layers=12, d_model=512, n_heads=8, d_ff=2048, context=256)


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # memory bound: one thread, unless told
    torch.manual_seed(0)
    state = {k: v.detach() for k, v in GPT(PARENT).state_dict().items()}
    moments = {f"{m}.{k}": torch.rand_like(v) for k, v in state.items() for m in ("exp_avg", "exp_avg_sq")}
    moments["step"] = torch.tensor(1000.0)
    n = sum(v.numel() for v in state.values())
    print(f"parent: 12 layers, d_model 512, {n / 1e6:.1f}M parameters, {torch.get_num_threads()} threads")
    configs = [GrowthConfig(operator=op) for op in ("stack", "interleave", "identity", "masked", "width")]
    for g in configs + [GrowthConfig(operator="width", noise=0.01)]:
        child = child_config(g, PARENT, 12 if g.operator == "width" else 24)
        t_state = best_of(lambda g=g, child=child: grow(g, state, PARENT, child))
        t_moments = best_of(lambda g=g, child=child: grow_moments(g, moments, PARENT, child))
        name = g.operator + (f" (noise {g.noise})" if g.noise else "")
        shape = f"{child.n_layers} layers, d_model {child.d_model}"
        print(f"{name:>20}: weights {t_state:6.3f} s   adam moments {t_moments:6.3f} s   -> {shape}")


if __name__ == "__main__":
    main()
