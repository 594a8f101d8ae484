"""The GPU check, one command, well under 10 minutes: absolute tokens/s of train() and of the independent
bare loop (bench/efficiency.py), MFU against the bf16 matmul peak measured on the same GPU, and their ratio,
on the `gpu` preset's model (12 layers, d_model 512, context 512, batch 32, bf16 autocast).

    PYTHONPATH=. python -m bench.gpu_check [--out gpu.json]   # on a machine with CUDA
    PYTHONPATH=. python -m bench.gpu_check --tiny             # anywhere: the tiny preset on CPU, to test the script
    PYTHONPATH=. python -m bench.gpu_check --preset llama     # another preset's model (any architecture), on CUDA

The full protocol at GPU size (tuning, held-out seeds, budgets) is `staged bench --preset gpu`. A preset
that reads token shards (a trained BPE) builds them in a temporary directory, deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.efficiency import throughput_and_mfu
from bench.presets import PRESETS
from bench.runner import open_corpora


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="allow CPU: a test of this script (default preset tiny)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="the model of this preset (default: gpu)")
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (use --tiny to test the script on CPU)", file=sys.stderr)
        return 2
    preset = PRESETS[args.preset or ("tiny" if args.tiny else "gpu")]
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as workdir:
        seed = preset.heldout_seeds[0]
        eff = throughput_and_mfu(preset, open_corpora(preset, [seed], Path(workdir))[seed])
    device = torch.cuda.get_device_name(0) if eff["device"].startswith("cuda") else "cpu"
    rounds = ", ".join(f"{r:.3f}" for r in eff["ratio_per_round"])
    print(f"device: {device}; preset {preset.name}: {preset.model}, batch {preset.train.batch_size}")
    print(f"matmul peak ({preset.peak_dtype}, {preset.matmul_size}^2): {eff['peak_flops'] / 1e12:.1f} TFLOP/s")
    print(f"train():   {eff['train_tokens_per_s']:,.0f} tokens/s, MFU {eff['mfu']:.3f}")
    print(f"bare loop: {eff['bare_tokens_per_s']:,.0f} tokens/s, MFU {eff['mfu_bare_loop']:.3f}")
    print(f"ratio train()/bare: {eff['throughput_ratio_vs_bare_loop']:.3f} (rounds {rounds}): {eff['note']}")
    print(f"took {time.perf_counter() - began:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": device, "preset": preset.name, **eff}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
