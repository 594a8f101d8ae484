"""The GPU check, one command, under 8 minutes on one GPU: every model family (FAMILIES: gpt, llama, ...) through
one grown stage (4 -> 8 layers, d_model 768, context 1024) in float32 and with bf16 + torch.compile + activation
checkpointing + micro batches (bench/gpu/families.py): loss parity, tokens/s, MFU and peak memory, as one JSON.

    PYTHONPATH=. python -m bench.gpu.check [--out gpu.json]   # on a machine with CUDA
    PYTHONPATH=. python -m bench.gpu.check --tiny [--no-compile]   # anywhere: toy sizes on CPU, to test the script
    PYTHONPATH=. python -m bench.gpu.check --ratio [--preset llama]   # instead: train() against the bare loop

``--ratio``: absolute tokens/s of train() and of the independent bare loop (bench/overhead/efficiency.py), MFU
against the
bf16 matmul peak measured on the same GPU, and their ratio, on the `gpu` preset's model (or ``--preset``'s).

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

from bench.gpu.families import GPU_SIZE, TINY_SIZE, check_family
from bench.overhead.efficiency import throughput_and_mfu
from bench.suite.presets import PRESETS
from bench.suite.runner import open_corpora
from models.families.lookup import FAMILIES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu.check", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="allow CPU: a test of this script (default preset tiny)")
    parser.add_argument("--ratio", action="store_true", help="train() against the bare loop instead of the families")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="--ratio: the model of this preset (default: gpu)")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated (default: every family)")
    parser.add_argument("--no-compile", action="store_true", help="the recipe without torch.compile")
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (use --tiny to test the script on CPU)", file=sys.stderr)
        return 2
    if not args.ratio:
        return _families(args)
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


def _families(args) -> int:
    began, device = time.perf_counter(), "cpu" if args.tiny else "cuda"
    size = TINY_SIZE if args.tiny else GPU_SIZE
    out = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "compile": not args.no_compile}
    out["families"] = {}
    for name in args.families.split(","):
        out["families"][name] = check_family(name, size, device, compile=not args.no_compile)
        print(f"gpu_check: {name} done at {time.perf_counter() - began:.0f} s", file=sys.stderr)
    out["seconds"] = round(time.perf_counter() - began, 1)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if all(f["parity"] for f in out["families"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
