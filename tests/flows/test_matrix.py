"""Every family under FSDP2, and DDP on two, through the flow: each grown stage trained by 2 gloo ranks under torchrun
(DDP, or FSDP2) registers the same kind of version as the same stage trained in one process, with weights within
ATOL, for every growth operator (stack, identity, width) and a layer map that is no multiple of the depth.

One pipeline per family and strategy: stage 1 in the task process, then stack (2 -> 4 layers), identity along a
non-multiple map (4 -> 6, interpose: blocks 1 and 2 duplicated in place, Adam moments mapped with them; only the
new blocks and the embeddings train) and width (6 layers, twice as wide) under torchrun. The one-process reference
is the same pipeline with no ``parallel``, registered under another model name in the same store (the name is part
of every stage key, so nothing is skipped; ``parallel`` is not). Tiny models, a few steps, the byte vocabulary (no
BPE to train).

A family that upcycling reaches (Mixtral: experts have no width growth) runs its own pipeline instead: a dense parent
(Llama) in the task process, upcycled into 4 experts, top 2 (Adam moments mapped), then stacked 2 -> 4 layers, both
under torchrun.

FSDP2 shards block by block and holds the root unit's frozen and trained parameters together: what it does depends on
the family's layout, so every family runs under it. DDP wraps the whole model and averages every gradient, whatever
the family: it runs on the byte GPT (our own module) and Llama (a transformers decoder); Qwen2, Qwen3 and Mistral
differ from Llama only inside attention, which DDP never sees (2.5 min of the suite saved).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from flows.staged import staged_training
from models.families.lookup import FAMILIES
from tasks.config import PipelineConfig
from tasks.registry import Registry

# As in tests/flows/test_ddp.py and tests/flows/test_fsdp.py: 2 ranks add two half-batch gradients where one process
# takes one mean (the same sum in another float32 order), which AdamW's 1/sqrt(v) amplifies where a gradient
# is near zero; over three grown stages of three steps that stays below 1e-4 here. A real mistake (a wrong
# slice, an un-averaged gradient, a parameter left out of the sharding) moves weights by ~lr = 3e-3 per step.
ATOL = 1e-3
WIDTHS = {"d_model": 16, "n_heads": 2, "d_ff": 32, "context": 16}
MOE: dict[str, str] = {}  # an MoE family -> the first dense family that upcycles into it (mixtral: llama)
for _name, _f in FAMILIES.items():
    if _f.moe:
        MOE.setdefault(_f.moe, _name)
MODELS = {  # every family, grouped-query attention where it has key-value heads
    name: {"arch": name, **WIDTHS, **({"n_kv_heads": 1} if "n_kv_heads" in f.config.model_fields else {})}
    for name, f in FAMILIES.items()
}
# the interpose stage also freezes the parent's blocks and the final norm and head but trains the embeddings: under
# FSDP2 the root unit (embeddings, final norm, head) holds trained and frozen parameters at once
INTERPOSE = {"skip_first": 1, "skip_last": 1}
GROWN = [(4, {"operator": "stack"}), (6, {"operator": "identity", "interpose": INTERPOSE, "freeze": {"head": True}})]
GROWN += [(6, {"operator": "width"})]
UPCYCLED = [(2, {"operator": "upcycle", "experts": 4, "top_k": 2}), (4, {"operator": "stack"})]


def pipeline(arch: str, name: str, strategy: str | None) -> PipelineConfig:
    """``arch``'s pipeline; an MoE family's starts from its dense family and upcycles it."""
    parallel = {"parallel": {"strategy": strategy, "nproc": 2}} if strategy else {}
    grown, arch = (UPCYCLED, MOE[arch]) if arch in MOE else (GROWN, arch)
    stages = [{"n_layers": 2, "steps": 4}] + [
        {"n_layers": n, "steps": 3, "growth": growth, "optimizer": {"state": "transfer"}, **parallel}
        for n, growth in grown
    ]
    return PipelineConfig.model_validate(
        {
            "retry": {"retries": 0},
            "checkpoint": {"every": 0},
            "gate": {"enabled": False},
            "registry": {"model_name": name},
            "data": {"max_bytes": 200_000},
            "model": MODELS[arch],
            "train": {"batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "eval_every": 3, "eval_batches": 1},
            "stages": stages,
        }
    )


@pytest.fixture(autouse=True)
def _one_thread_per_rank(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torchrun's ranks inherit it


@pytest.fixture(scope="module")
def store(prefect_harness, tmp_path_factory):
    """One embedded store for the whole matrix; yields (workdir, run(arch, strategy) -> the pipeline's results)."""
    workdir = tmp_path_factory.mktemp("matrix")
    done: dict[tuple[str, str | None], list] = {}

    def run(arch: str, strategy: str | None):
        if (arch, strategy) not in done:
            name = f"m-{arch}-{strategy or 'one'}"
            done[arch, strategy] = staged_training(pipeline(arch, name, strategy), str(workdir))
        return done[arch, strategy]

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield workdir, run


def _download(registry: Registry, version, dst: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A version's weights and the names of the files in its directory."""
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=version.source, dst_path=str(dst), tracking_uri=registry.tracking_uri
    )
    return load_file(Path(local) / "model.safetensors"), sorted(p.name for p in Path(local).iterdir())


def _same_as_one_process(registry: Registry, ranked, reference, tmp_path: Path) -> None:
    """Every grown stage trained by the ranks registered what the one-process stage registered, within ATOL."""
    client = registry.client()
    for ours, theirs in zip(ranked[1:], reference[1:]):
        mine, one = (client.get_model_version(r.ref.name, r.ref.version) for r in (ours, theirs))
        stage = mine.tags["stage"]
        assert client.get_run(mine.run_id).data.params["nproc"] == "2", stage  # trained by the two ranks
        for tag in ("n_layers", "growth", "layer_map", "freeze", "trained", "data_cursor", "global_step", "stage"):
            assert mine.tags.get(tag) == one.tags.get(tag), (stage, tag)
        w_ours, files_ours = _download(registry, mine, tmp_path / "ranks" / stage)
        w_one, files_one = _download(registry, one, tmp_path / "one" / stage)
        assert files_ours == files_one, stage  # the same kind of version: the family's directory, pyfunc files
        assert w_ours.keys() == w_one.keys(), stage
        for key in w_ours:
            torch.testing.assert_close(w_ours[key], w_one[key], rtol=0, atol=ATOL, msg=f"stage {stage}: {key}")
        assert ours.val_loss == pytest.approx(theirs.val_loss, abs=ATOL)
        assert [loss for _, loss in ours.train_curve] == pytest.approx([v for _, v in theirs.train_curve], abs=ATOL)


DENSE = [a for a in MODELS if a not in MOE]
CASES = [(a, "fsdp") for a in DENSE] + [(a, "ddp") for a in DENSE if a in ("gpt", "llama")]


@pytest.mark.integration
@pytest.mark.parametrize(("arch", "strategy"), CASES)
def test_a_grown_stage_under_torchrun_is_the_one_process_stage(store, arch, strategy, tmp_path):
    workdir, run = store
    reference, ranked = run(arch, None), run(arch, strategy)
    registry = Registry.resolve(workdir)
    client = registry.client()
    _same_as_one_process(registry, ranked, reference, tmp_path)
    assert [client.get_model_version(r.ref.name, r.ref.version).tags["n_layers"] for r in ranked] == list("2466")
    interposed = client.get_model_version(ranked[2].ref.name, ranked[2].ref.version).tags
    assert interposed["layer_map"] == "0 1 1* 2 2* 3" and interposed["trained"] == "blocks 2 4; embeddings"
    w_before, _ = _download(
        registry, client.get_model_version(ranked[1].ref.name, ranked[1].ref.version), tmp_path / "p"
    )
    w_after, _ = _download(
        registry, client.get_model_version(ranked[2].ref.name, ranked[2].ref.version), tmp_path / "c"
    )
    frozen = [k for k in w_after if not k.startswith(("blocks.", "model.layers.", "tok_emb", "pos_emb", "model.embed"))]
    assert frozen and all(torch.equal(w_after[k], w_before[k]) for k in frozen)  # the head stayed, bit for bit
    assert ranked[-1].params > ranked[-2].params  # the width stage doubled the widths


@pytest.mark.integration
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize("arch", list(MOE))
def test_an_upcycled_stage_under_torchrun_is_the_one_process_stage(store, arch, strategy, tmp_path):
    workdir, run = store
    reference, ranked = run(arch, None), run(arch, strategy)
    registry = Registry.resolve(workdir)
    _same_as_one_process(registry, ranked, reference, tmp_path)
    client = registry.client()
    tags = [client.get_model_version(r.ref.name, r.ref.version).tags for r in ranked]
    assert [t["n_layers"] for t in tags] == list("224") and [t["growth"] for t in tags] == ["none", "upcycle", "stack"]
    moe, _ = _download(registry, client.get_model_version(ranked[1].ref.name, ranked[1].ref.version), tmp_path / "u")
    assert any(".block_sparse_moe.experts.3." in k for k in moe)  # transformers' Mixtral directory, 4 experts
    assert ranked[1].val_loss_init == pytest.approx(ranked[0].val_loss, abs=1e-4)  # the upcycle kept the function
