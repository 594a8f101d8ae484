"""A Llama stage through the stage driver (no Prefect): checkpoints and a bitwise resume, masked growth's gates
folded into a plain transformers model, and the token-shard corpus's cursor."""

import pytest
import torch
from repo import REPO_ROOT

from models.data.corpus import open_corpus
from models.data.shards import TokenCorpus
from models.families.lookup import family_of
from models.train.plan import Hooks
from tasks import driver
from tasks.config import load_config
from tasks.store import LocalStorage, checkpoint

DEMO = REPO_ROOT / "configs" / "llama-demo.yaml"
TOY = ["data.max_bytes=200000", "tokenizer.train.vocab_size=300", "model.d_model=32", "model.d_ff=64"]
TOY += ["model.context=16", "train.batch_size=4", "train.eval_every=3", "train.eval_batches=1"]


class Interrupt(RuntimeError):
    pass


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    spec = load_config(DEMO, TOY + ["stages=[{n_layers: 2, steps: 6}]"]).stage_specs()[0]
    cache = tmp_path_factory.mktemp("cache")
    vocabulary = driver.resolve_tokenizer(spec, cache)
    return spec, open_corpus(spec.data, spec.model.context, spec.seed, vocabulary, cache, progress=False)


def test_the_demo_reads_token_shards_with_the_byte_corpus_cursor(stage):
    spec, corpus = stage
    assert isinstance(corpus, TokenCorpus) and corpus.manifest.vocab_size == 300
    x, y = corpus.batch(5, 4)
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < 300
    assert torch.equal(corpus.batch(5, 4)[0], x)  # a pure function of the cursor


def test_a_llama_stage_resumes_from_its_checkpoint_bitwise(stage, tmp_path):
    spec, corpus = stage
    straight = driver.run(spec, None, corpus=corpus)
    checkpoints = driver.Checkpoints(LocalStorage(str(tmp_path)), "key", every=2, keep=2)

    def die_at_5(info):
        if info.step == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        driver.run(spec, None, hooks=Hooks(on_step=die_at_5), checkpoints=checkpoints, corpus=corpus)
    assert checkpoint.complete(checkpoints.storage, "key") == [2, 4]
    resumed = driver.run(spec, None, checkpoints=checkpoints, corpus=corpus)
    assert resumed.resumed_from == 4
    a, b = family_of(straight.model).weights(straight.model), family_of(resumed.model).weights(resumed.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.result.val_curve == straight.result.val_curve


def test_masked_growth_trains_through_hooks_and_saves_a_plain_model(stage):
    spec1, corpus = stage
    overrides = TOY + [
        "stages=[{n_layers: 2, steps: 2}, {n_layers: 4, steps: 2, growth: {operator: masked, ramp_steps: 4}}]"
    ]
    spec1, spec2 = load_config(DEMO, overrides).stage_specs()
    first = driver.run(spec1, None, corpus=corpus)
    state = {k: v.clone() for k, v in family_of(first.model).weights(first.model).items()}
    parent = driver.Parent(2, first.result.cursor, 2, lambda: (spec1.model, state, None))
    grown = driver.run(spec2, parent, corpus=corpus)
    assert grown.result.val_loss_init == pytest.approx(first.result.val_loss, rel=1e-6)  # gates at 0
    assert not any(
        hasattr(layer, "gate_hooks") for layer in family_of(grown.model).blocks(grown.model)
    )  # folded at the end
    layer1 = family_of(grown.model).weights(grown.model)["model.layers.1.self_attn.o_proj.weight"]
    assert layer1.abs().sum() > 0  # a gated copy, not a zeroed one
