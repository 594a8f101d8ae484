"""Memory per rank for parameters + gradients + AdamW moments: FSDP2 over N ranks against one process.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/gpu/fsdp_memory.py [--nproc 2] [--layers 8 --d-model 256]

One process builds the byte GPT, takes one AdamW step and counts the bytes of every parameter,
gradient and moment it holds; then the same model is sharded (models.train.parallel.shard) over ``--nproc``
gloo ranks under torchrun, each takes the same step on its slice of the batch and counts the bytes of
its local shards (DTensor.to_local()). Printed: both, their ratio, and each process's resident memory
after the step and at its peak (the whole interpreter, torch included: context, not the figure; every
rank builds the whole model before sharding it, as the stage driver does, so the peak holds it once).
The tensor bytes are a count, not a timing: the same on a busy machine. Not a test (tests/ must stay
fast); run it by hand.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from models.families.gpt import GPT, GPTConfig
from models.train.optim import make_optimizer
from models.train.parallel import end_rank

ROOT = Path(__file__).resolve().parents[1]


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this process holds of parameters, gradients and optimizer state."""
    params = [_local(p) for p in model.parameters()]
    grads = [_local(p.grad) for p in model.parameters() if p.grad is not None]
    moments = [_local(v) for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
    count = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    return {"params": count(params), "grads": count(grads), "optimizer": count(moments)}


def one_step(cfg: GPTConfig, batch: int, rank: int = 0, world: int = 1) -> dict:
    torch.manual_seed(0)
    model = GPT(cfg)
    if world > 1:
        from models.train.parallel import shard

        shard(model, torch.device("cpu"))
    optimizer = make_optimizer(model, 1e-3, 0.1, 0.99)
    x = torch.randint(0, 256, (batch, cfg.context), generator=torch.Generator().manual_seed(1))
    part = x.chunk(world)[rank]
    model.loss(part, part).backward()
    optimizer.step()
    gc.collect()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    now_mib = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return {
        **state_bytes(model, optimizer),
        "peak_rss_mib": round(peak_mib),
        "rss_mib": round(now_mib),
        "params_count": sum(p.numel() for p in model.parameters()),
    }


def _rank_main(cfg: GPTConfig, batch: int, out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    (out / f"rank-{rank}.json").write_text(json.dumps(one_step(cfg, batch, rank, world)))
    end_rank(0)  # leaves the group without interpreter teardown (models/train/parallel.py says why)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rank-out", help=argparse.SUPPRESS)  # set when torchrun starts this file as a rank
    args = parser.parse_args()
    cfg = GPTConfig(n_layers=args.layers, d_model=args.d_model, n_heads=4, d_ff=4 * args.d_model, context=64)
    if args.rank_out:
        _rank_main(cfg, args.batch, Path(args.rank_out))
        return
    single = one_step(cfg, args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "tasks.parallel.rendezvous", "--nnodes=1", f"--nproc-per-node={args.nproc}"]
        cmd += ["--rdzv-backend=staged-c10d", "--rdzv-endpoint=127.0.0.1:0", "--local-addr=127.0.0.1"]
        cmd += [__file__, f"--layers={args.layers}", f"--d-model={args.d_model}", f"--batch={args.batch}"]
        cmd += [f"--rank-out={tmp}"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        ranks = [json.loads((Path(tmp) / f"rank-{r}.json").read_text()) for r in range(args.nproc)]
    total = lambda r: r["params"] + r["grads"] + r["optimizer"]  # noqa: E731
    print(f"model: {single['params_count']:,} parameters ({args.layers} layers, d_model {args.d_model})")
    rss = lambda r: f"RSS after the step {r['rss_mib']} MiB, peak {r['peak_rss_mib']} MiB"  # noqa: E731
    print(f"one process: params + grads + AdamW = {total(single):,} bytes ({rss(single)})")
    for r, rank in enumerate(ranks):
        print(f"FSDP rank {r}/{args.nproc}: {total(rank):,} bytes ({rss(rank)})")
    worst = max(total(r) for r in ranks)
    ideal = f"ideal 1/{args.nproc} = {1 / args.nproc:.3f}"
    print(f"ratio (largest rank / one process): {worst / total(single):.3f}  ({ideal})")


if __name__ == "__main__":
    main()
