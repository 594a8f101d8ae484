"""Downstream scores join a version's model card (tasks/publish/card.py:add_scores): a card's content is
kept, a version without a card starts one, and a card that cannot be read fails loudly instead of being
replaced by an empty one."""

import pytest
from mlflow import MlflowClient
from repo import REPO_ROOT

from models.families.gpt import GPT
from tasks.config import load_config
from tasks.publish import add_scores
from tasks.registry import Registry, register
from tasks.registry.schema import Artifacts
from tasks.store import save_model
from tests.versions import stage1_tags, stage_params

SMOKE = REPO_ROOT / "configs" / "smoke.yaml"
SCORES = {"staged_arith": {"acc": 0.5}}


@pytest.fixture
def version(workdir, tmp_path):
    registry, spec = Registry.resolve(workdir), load_config(SMOKE).stage_specs()[0]
    sha = save_model(GPT(spec.model), tmp_path / "model")
    tags, params = stage1_tags(sha, "k-card"), stage_params(spec)
    ref = register(
        registry, spec.model_name, spec.experiment, model_dir=tmp_path / "model", tags=tags, params=params, metrics={}
    )
    return registry, ref


def test_a_version_without_a_card_starts_one(version):
    registry, ref = version
    add_scores(registry, ref.name, ref.version, ref.run_id, SCORES)
    description = registry.client().get_model_version(ref.name, ref.version).description
    assert (
        description.startswith(f"# {ref.name} version {ref.version}\n")
        and "| `staged_arith` | acc | 0.5 |" in description
    )


def test_a_card_keeps_its_content_and_gains_the_scores(version):
    registry, ref = version
    registry.client().log_text(ref.run_id, "# my card\n\nlineage and all\n", Artifacts.CARD)
    add_scores(registry, ref.name, ref.version, ref.run_id, SCORES)
    description = registry.client().get_model_version(ref.name, ref.version).description
    assert description.startswith("# my card\n\nlineage and all\n") and "| `staged_arith` | acc | 0.5 |" in description


def test_a_card_that_cannot_be_read_is_an_error_not_an_empty_card(version, monkeypatch):
    registry, ref = version
    registry.client().log_text(ref.run_id, "# my card\n", Artifacts.CARD)

    def unreachable(*args, **kwargs):
        raise ConnectionError("artifact store unreachable")

    monkeypatch.setattr(MlflowClient, "download_artifacts", unreachable)
    with pytest.raises(ConnectionError, match="unreachable"):
        add_scores(registry, ref.name, ref.version, ref.run_id, SCORES)
    monkeypatch.undo()
    assert registry.client().get_model_version(ref.name, ref.version).description in ("", None)  # untouched
