"""FSDP2 against DDP on GPUs: tokens/s, MFU against the measured bf16 matmul peak, memory per GPU.

    PYTHONPATH=. python bench/gpu/fsdp.py --out gpu-fsdp.json          # a GPU machine, under 10 minutes
    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/gpu/fsdp.py --tiny       # CPU, gloo, toy sizes (the test)

1. Peak: the best of a few timed (8192 x 8192) @ (8192 x 8192) bf16 matmuls on GPU 0 (2 x 8192^3 FLOPs
   each): what this GPU really delivers, the denominator of MFU (not the datasheet's figure).
2. For each strategy (ddp, fsdp) and world size (1 GPU, and all of them when there are several), one
   torchrun (tasks/parallel/rendezvous.py) trains the byte GPT at ~1.2B parameters (24 layers,
   d_model 2048, context 1024, 8 sequences per GPU) on random bytes: 3 warm-up steps, then 10 timed
   steps of forward, backward, clip, AdamW, as models/train/loop.py does with precision bf16 (DDP: bf16 autocast;
   FSDP2: fully_shard per block + root with bf16 parameters and fp32 reduction, models/train/parallel.py).
   tokens/s = timed tokens / wall time; MFU = the family's flops_per_token (models/families/family.py: 6 x matmul
   weights + 6 x layers x context x d_model, as bench/ counts) x tokens/s / (peak x GPUs); memory = max
   allocated per GPU.
Output: a table on stdout and the figures as JSON (``--out``). ``--tiny``: 2 layers, d_model 64 on CPU
with 1 and 2 gloo processes and a small fp32 matmul as the "peak": it checks that the script runs,
not a performance figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
FULL = {"n_layers": 24, "d_model": 2048, "n_heads": 16, "d_ff": 8192, "context": 1024, "batch": 8, "steps": 10}
TINY = {"n_layers": 2, "d_model": 64, "n_heads": 2, "d_ff": 256, "context": 32, "batch": 4, "steps": 2}


def matmul_peak(cuda: bool) -> float:
    """FLOP/s of the best timed square matmul (bf16 8192 on GPU, fp32 256 on CPU)."""
    n, dtype, device = (8192, torch.bfloat16, "cuda") if cuda else (256, torch.float32, "cpu")
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(5):
        if cuda:
            torch.cuda.synchronize()
        began = time.perf_counter()
        for _ in range(10):
            a @ b
        if cuda:
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - began) / 10)
    return 2 * n**3 / best


def rank_main(strategy: str, size: dict, out: Path) -> None:
    """One rank: build, wrap (DDP) or shard (FSDP2), warm up, time ``steps`` training steps."""
    from models.families.family import token_loss
    from models.families.gpt import GPT, GPTConfig
    from models.train import parallel
    from models.train.optim import make_optimizer

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    cfg = GPTConfig(**{k: size[k] for k in ("n_layers", "d_model", "n_heads", "d_ff", "context")})
    torch.manual_seed(0)
    model = GPT(cfg)
    n_params = model.num_params()
    if strategy == "fsdp":
        parallel.shard(model, device, bf16=cuda)  # train.precision: bf16
        net = model
    else:
        model.to(device)
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    optimizer = make_optimizer(model, 1e-4, 0.1, 0.99)
    x = torch.randint(0, 256, (size["batch"], cfg.context), device=device)

    def step() -> None:
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
        with ctx:
            loss = token_loss(net(x), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    dist.barrier()
    began = time.perf_counter()
    for _ in range(size["steps"]):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    world = dist.get_world_size()
    memory = torch.cuda.max_memory_allocated() if cuda else 0
    if dist.get_rank() == 0:
        tokens = size["steps"] * size["batch"] * cfg.context * world
        result = {"params": n_params, "world": world, "seconds": seconds, "tokens_per_s": tokens / seconds}
        (out / "result.json").write_text(json.dumps({**result, "max_memory_allocated_per_gpu": memory}))
    parallel.end_rank(0)  # leaves the group without interpreter teardown (models/train/parallel.py says why)


def run_one(strategy: str, world: int, size: dict, tiny: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "tasks.parallel.rendezvous", "--nnodes=1", f"--nproc-per-node={world}"]
        cmd += ["--rdzv-backend=staged-c10d", "--rdzv-endpoint=127.0.0.1:0", "--local-addr=127.0.0.1"]
        cmd += [__file__, "--rank", strategy, "--rank-out", tmp] + (["--tiny"] if tiny else [])
        subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
        return json.loads((Path(tmp) / "result.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU, toy sizes: checks that the script runs")
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--rank", help=argparse.SUPPRESS)  # strategy, when torchrun starts this file as a rank
    parser.add_argument("--rank-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = TINY if args.tiny else FULL
    if args.rank:
        rank_main(args.rank, size, Path(args.rank_out))
        return
    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        sys.exit("gpu_fsdp: no CUDA device here; use --tiny for the CPU check")
    gpus = torch.cuda.device_count() if cuda else 2
    peak = matmul_peak(cuda)
    from models.families.gpt import GPTConfig
    from models.families.lookup import family_of

    cfg = GPTConfig(**{k: size[k] for k in ("n_layers", "d_model", "n_heads", "d_ff", "context")})
    per_token = family_of(cfg).flops_per_token(cfg)  # the one convention (models/families/family.py), as bench/ counts
    rows = []
    for world in sorted({1, gpus}):
        for strategy in ("ddp", "fsdp"):
            r = run_one(strategy, world, size, args.tiny)
            flops = per_token * r["tokens_per_s"]
            rows.append({"strategy": strategy, **r, "mfu": flops / (peak * world)})
    device = torch.cuda.get_device_name(0) if cuda else "cpu (--tiny)"
    report = {"device": device, "peak_flops": peak, "size": size, "runs": rows}
    print(f"{device}: measured matmul peak {peak / 1e12:.1f} TFLOP/s; model {rows[0]['params']:,} parameters")
    print(f"{'strategy':>8} {'GPUs':>4} {'tokens/s':>12} {'MFU':>6} {'GiB/GPU':>8}")
    for r in rows:
        gib = r["max_memory_allocated_per_gpu"] / 2**30
        print(f"{r['strategy']:>8} {r['world']:>4} {r['tokens_per_s']:>12,.0f} {r['mfu']:>6.1%} {gib:>8.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
