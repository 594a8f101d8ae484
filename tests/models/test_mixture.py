"""data.sources: exact shares per stage, one cursor per source across stages, the stage key, bad mixtures."""

import random
from pathlib import Path

import pytest
import torch
from repo import REPO_ROOT

from flows.cli.main import main
from models.data.bytes import ByteCorpus, DataConfig
from models.data.mixture import MixtureCorpus, Origin, allocate
from tasks.config import load_config, spec_hash

ROOT = REPO_ROOT
MIX = str(ROOT / "configs" / "mixture-demo.yaml")
SMOKE = str(ROOT / "configs" / "smoke.yaml")


@pytest.mark.parametrize("weights", [[0.75, 0.25], [1.0, 2.0, 7.0], [0.013, 0.987], [0.2, 0.3, 0.1, 0.4]])
def test_every_source_gets_its_weight_to_within_one_sequence_at_every_batch(weights):
    batch, total = 8, sum(weights)
    done = [0] * len(weights)
    for t in range(1, 400):
        for s in allocate(weights, done, batch):
            done[s] += 1
        for w, d in zip(weights, done):  # far inside "within one batch": within one sequence
            assert abs(d - t * batch * w / total) < 1, (t, done)


def _two(tmp_path: Path, origin: Origin) -> MixtureCorpus:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_bytes(bytes(random.Random(0).choices(range(0, 128), k=6000)))
    b.write_bytes(bytes(random.Random(1).choices(range(128, 256), k=6000)))
    corpora = {n: ByteCorpus(DataConfig(source=str(p)), 16, 0) for n, p in (("a", a), ("b", b))}
    return MixtureCorpus(corpora, {"a": 3.0, "b": 1.0}, origin)


def test_rows_come_from_the_right_source_and_random_access_equals_the_stream(tmp_path):
    mix = _two(tmp_path, Origin(cursor=100, cursors={"a": 10, "b": 7}))
    batches = [mix.batch(100 + 8 * t, 8) for t in range(20)]
    from_b = sum(int((x >= 128).all(dim=1).sum()) for x, _ in batches)  # source b's bytes are >= 128
    assert from_b == 40 and mix.counts(260) == {"a": 120, "b": 40}
    assert mix.cursors(260) == {"a": 130, "b": 47}  # each source continues from its own origin
    again = _two(tmp_path, Origin(cursor=100, cursors={"a": 10, "b": 7}))
    x, y = again.batch(100 + 8 * 13, 8)  # no history: the same rows
    assert torch.equal(x, batches[13][0]) and torch.equal(y, batches[13][1])
    halves = [again.batch(100 + 8 * 13, 8, rank=r, world=2)[0] for r in (0, 1)]
    assert torch.equal(torch.cat(halves), x)  # ranks' slices are the global batch


def test_mixture_config_resolves_per_stage_and_keys_change_from_the_reweighed_stage_only():
    specs = load_config(MIX).stage_specs()
    assert [{s.name: s.weight for s in spec.data.sources} for spec in specs][1:] == [
        {"code": 0.75, "prose": 0.25},
        {"code": 0.25, "prose": 0.75},
    ]
    other = load_config(MIX, ["stages.2.data.weights.prose=0.5"]).stage_specs()
    assert [spec_hash(a) == spec_hash(b) for a, b in zip(specs, other)] == [True, True, False]
    # a one-source config serializes as before the mixture existed: its stage keys did not move
    assert "sources" not in load_config(SMOKE).stage_specs()[0].model_dump_json()


BAD = {
    "zero weight": (["data.sources.1.weight=0"], "data.sources.1.weight: Input should be greater than 0"),
    "weight not a number": (["data.sources.0.weight=lots"], "data.sources.0.weight: Input should be a valid number"),
    "weights name no source": (["stages.1.data.weights.poetry=1"], "no source named poetry"),
    "every weight 0": (["stages.1.data.weights.code=0", "stages.1.data.weights.prose=0"], "every source weighed 0"),
    "empty source": (["data.sources.1.glob=nothing.md"], "data source 'prose': data source"),
    "not the declared format": (["data.sources.1.format=jsonl"], "data source 'prose': "),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_mixture_is_one_line_naming_it_and_exit_2(case, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sets, message = BAD[case]
    with pytest.raises(SystemExit) as exit_:
        main(["run", MIX, "--workdir", str(tmp_path / "w"), *[a for s in sets for a in ("--set", s)]])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "w" / "mlflow.db").exists()  # nothing registered
