"""Every tag added after the first release has a default, so a version registered before the tag existed
still reads (and is still found, skipped, grown from) with that default; only the first release's tags
may be required."""

from repo import REPO_ROOT

from models.families.gpt import GPT
from tasks.config import load_config
from tasks.registry import Registry, register
from tasks.registry.client import find_version
from tasks.registry.schema import CardTags, GateTags, ImportTags, VersionTags
from tasks.store import save_model
from tests.versions import stage1_tags, stage_params

SMOKE = REPO_ROOT / "configs" / "smoke.yaml"
# the tags the first release (the registry schema of 2026-12-01) required; never add to these sets
FIRST_RELEASE_REQUIRED = {
    VersionTags: {"stage", "n_layers", "parent_version", "weights_sha256", "stage_key", "growth", "data_cursor"}
    | {"global_step", "config_hash", "code_version", "val_loss"},
    GateTags: {"decision", "reason", "metric", "margin", "val_loss", "bpb", "at", "champion_before"}
    | {"champion_val_loss", "sample"},
    CardTags: {"model_card", "git_commit", "data_config"},
}
FIRST_RELEASE_OPTIONAL = {VersionTags: {"optimizer_sha256"}, GateTags: {"promoted_at", "replaced"}}
FIRST_VERSION = {  # a stage 1 as the first release wrote its tags (None as "")
    "stage": "1",
    "n_layers": "3",
    "parent_version": "",
    "weights_sha256": "ab" * 32,
    "stage_key": "k1",
    "growth": "none",
    "data_cursor": "0",
    "global_step": "0",
    "config_hash": "c",
    "code_version": "v",
    "val_loss": "5.000000",
}
FIRST_GATE = {"decision": "promoted", "reason": "no champion yet", "metric": "val_loss", "margin": "0.01"}
FIRST_GATE |= {"val_loss": "2.0", "bpb": "2.9", "at": "2026-12-01T00:00:00", "champion_before": ""}
FIRST_GATE |= {"champion_val_loss": "", "sample": "def "}


def _newer(group) -> set[str]:
    """The tags of ``group`` that a version of the first release does not carry."""
    return set(group.model_fields) - FIRST_RELEASE_REQUIRED[group] - FIRST_RELEASE_OPTIONAL.get(group, set())


def test_no_tag_added_since_the_first_release_is_required():
    for group, first in FIRST_RELEASE_REQUIRED.items():
        required = {name for name, f in group.model_fields.items() if f.is_required()}
        assert required <= first, f"{group.__name__}: give {sorted(required - first)} a default for older versions"


def test_a_first_release_version_reads_with_every_newer_tag_at_its_default():
    tags = VersionTags.from_tags(FIRST_VERSION)
    assert tags is not None and tags.stage == 1 and tags.parent_version is None and tags.val_loss == 5.0
    assert {"freeze", "data_cursors", "data_mixture", "manifest_sha256", "tokenizer_sha256"} <= _newer(VersionTags)
    assert {name: getattr(tags, name) for name in _newer(VersionTags)} == dict.fromkeys(_newer(VersionTags))
    assert tags.source_cursors() == {}  # a one-corpus pipeline
    gate = GateTags.from_tags({GateTags.prefix + k: v for k, v in FIRST_GATE.items()})
    assert gate is not None and gate.decision == "promoted" and "bpt" in _newer(GateTags) and gate.bpt is None
    assert ImportTags.from_tags(FIRST_VERSION) is None  # not an import


def test_a_registered_version_without_the_newer_tags_is_found_with_their_defaults(workdir, tmp_path):
    """A real version, its newer tags deleted as if a first-release run had registered it: the flow's own
    lookup (what a rerun skips on, what a later stage grows from) reads it."""
    registry, spec = Registry.resolve(workdir), load_config(SMOKE).stage_specs()[0]
    out = tmp_path / "model"
    sha = save_model(GPT(spec.model), out)
    tags = stage1_tags(sha, "k-old", freeze="parent", data_cursors='{"prose": 7}', data_mixture='{"prose": 1.0}')
    ref = register(
        registry, spec.model_name, spec.experiment, model_dir=out, tags=tags, params=stage_params(spec), metrics={}
    )
    client = registry.client()
    assert ref.freeze == "parent" and ref.tags.source_cursors() == {"prose": 7}
    for name in _newer(VersionTags):
        client.delete_model_version_tag(spec.model_name, ref.version, name)
    assert set(client.get_model_version(spec.model_name, ref.version).tags) == set(FIRST_VERSION) | {"optimizer_sha256"}

    old = find_version(client, spec.model_name, "k-old")
    assert old is not None and old.version == ref.version and old.weights_sha256 == sha
    assert old.freeze is None and old.data_cursors is None and old.data_mixture is None
    assert old.tokenizer_sha256 is None and old.manifest_sha256 is None and old.tags.source_cursors() == {}
