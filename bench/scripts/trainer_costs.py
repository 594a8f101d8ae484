"""What each trainer key costs on this machine: tokens/s, MFU and validation loss of a byte GPT (6 layers,
d_model 128, batch 32 x 128, 12 steps) per setting, and the bytes autograd saves for backward with and without
activation checkpointing. The figures of the README's *Training on a GPU*.

    PYTHONPATH=. python -m bench.scripts.trainer_costs
"""

from __future__ import annotations

import torch
from torch.autograd.graph import saved_tensors_hooks

from models.data.bytes import ByteCorpus, DataConfig
from models.families.family import token_loss
from models.families.gpt import GPT, GPTConfig
from models.families.lookup import family_of
from models.train.loop import TrainConfig, train
from models.train.plan import Start
from models.train.step import checkpointed

CFG = GPTConfig(n_layers=6, d_model=128, n_heads=4, d_ff=512, context=128)
BASE = dict(steps=12, batch_size=32, eval_every=100, eval_batches=1, device="cpu", warmup_steps=2)
SETTINGS = {
    "fp32": {},
    "micro 8": {"micro_batch_size": 8},
    "checkpointing full": {"activation_checkpointing": "full"},
    "bf16": {"precision": "bf16"},
}


def main() -> None:
    torch.set_num_threads(1)
    corpus = ByteCorpus(DataConfig(max_bytes=2_000_000), context=CFG.context, seed=0)
    for name, keys in SETTINGS.items():
        torch.manual_seed(0)
        r = train(GPT(CFG), corpus, TrainConfig(**BASE, **keys), start=Start(seed=1))
        print(f"{name}: {r.tokens_per_s:,.0f} tokens/s, MFU {r.mfu:.3f}, val {r.val_loss:.4f}")
    x, y = corpus.batch(0, BASE["batch_size"])
    for mode in ("none", "full"):
        model, saved = GPT(CFG), []

        def pack(t, saved=saved):
            saved.append(t.numel() * t.element_size())
            return t

        with checkpointed(model, family_of(model), mode), saved_tensors_hooks(pack, lambda t: t):
            loss = token_loss(model(x), y)
        loss.backward()
        print(f"saved for backward, checkpointing {mode}: {sum(saved) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
