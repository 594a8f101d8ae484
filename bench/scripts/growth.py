"""How long each growth operator takes on a large state dict (weights and Adam moments).

    PYTHONPATH=. python bench/scripts/growth.py                # byte GPT: 12 layers, d_model 512
    PYTHONPATH=. python bench/scripts/growth.py --arch llama   # Llama: 24 layers, hidden 1024 (336M parameters)
    PYTHONPATH=. python bench/scripts/growth.py --arch llama --layers 12   # grown into a 24-layer, hidden 1024 one

Depth operators grow the parent to twice its depth (middle: 1.5x); width doubles the widths (4x the
parameters; for a parent of 100M parameters or more, such as the Llama, only with --width: ~8 GB). The
number printed is the best of a few runs, growth only (no model construction, no I/O). Growth is memory
bound, so it runs on one thread (set OMP_NUM_THREADS for more): on shared cores, idle OpenMP threads spin
against other jobs and make every operator several times slower. A large parent's Adam moments are timed
with --moments (2x the memory again).
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import torch

from models.families.gpt import GPTConfig
from models.families.llama import LlamaFamilyConfig
from models.families.lookup import family_of
from models.growth import GrowthConfig, child_config, grow
from models.growth_moments import grow_moments

PARENTS = {
    "gpt": GPTConfig(n_layers=12, d_model=512, n_heads=8, d_ff=2048, context=256),
    # TinyLlama-like proportions at 1024 hidden: GQA 16 query / 4 key-value heads, SwiGLU 2816, 32k vocabulary
    "llama": LlamaFamilyConfig(
        arch="llama", n_layers=24, d_model=1024, n_heads=16, n_kv_heads=4, d_ff=2816, context=2048, vocab_size=32000
    ),
}

SMALL = 100_000_000  # parameters: below, width (4x) and the moments (2x) fit in a few GB and are timed by default


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
        del out
        gc.collect()
    return min(times)


def random_state(cfg) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        family = family_of(cfg)
        shapes = {k: v.shape for k, v in family.weights(family.build(cfg)).items()}
    return {k: torch.rand(shape) for k, shape in shapes.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", choices=sorted(PARENTS), default="gpt")
    parser.add_argument("--width", action="store_true", help="a large parent: also time width (4x the parameters)")
    parser.add_argument("--moments", action="store_true", help="a large parent: also time the Adam moments")
    parser.add_argument("--layers", type=int, help="the parent's depth (default: 12 for gpt, 24 for llama)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # memory bound: one thread, unless told
    torch.manual_seed(0)
    parent = PARENTS[args.arch]
    parent = parent.model_copy(update={"n_layers": args.layers}) if args.layers else parent
    small = family_of(parent).num_params(parent) < SMALL  # width and moments timed without asking
    state = random_state(parent)
    n = sum(v.numel() for v in state.values())
    print(
        f"parent: {args.arch}, {parent.n_layers} layers, width {parent.d_model}, {n / 1e6:.1f}M parameters "
        f"({4 * n / 2**30:.2f} GiB), {torch.get_num_threads()} threads"
    )
    moments = None
    if small or args.moments:
        moments = {f"{m}.{k}": torch.rand_like(v) for k, v in state.items() for m in ("exp_avg", "exp_avg_sq")}
        moments["step"] = torch.tensor(1000.0)
    ops = ["stack", "interleave", "middle", "identity", "masked"] + (["width"] if small or args.width else [])
    configs = [GrowthConfig(operator=op) for op in ops] + (
        [GrowthConfig(operator="width", noise=0.01)] if small else []
    )
    for g in configs:
        depth = parent.n_layers * 3 // 2 if g.operator == "middle" else 2 * parent.n_layers
        child = child_config(g, parent, parent.n_layers if g.operator == "width" else depth)
        t_state = best_of(lambda g=g, child=child: grow(g, state, parent, child))
        line = f"{g.operator + (f' (noise {g.noise})' if g.noise else ''):>20}: weights {t_state:6.3f} s"
        if moments is not None:
            t_moments = best_of(lambda g=g, child=child: grow_moments(g, moments, parent, child))
            line += f"   adam moments {t_moments:6.3f} s"
        print(f"{line}   -> {child.n_layers} layers, width {child.d_model}", flush=True)


if __name__ == "__main__":
    main()
