"""Registration is exactly-once: a crash between logging the run and creating the version leaves an
orphan run that the next attempt deletes; a version with the stage key is never created twice."""

from pathlib import Path

from mlflow.entities import ViewType

from models.gpt import GPT
from tasks.config import load_config
from tasks.registry import Registry, register
from tasks.registry.schema import StageParams, VersionTags
from tasks.store import save_model, save_optimizer

SMOKE = Path(__file__).parent.parent / "configs" / "smoke.yaml"


def test_an_orphan_run_is_cleaned_up_and_a_second_register_returns_the_same_version(workdir, tmp_path):
    registry, spec = Registry.resolve(workdir), load_config(SMOKE).stage_specs()[0]
    out = tmp_path / "model"
    sha = save_model(GPT(spec.model), out)
    tags = VersionTags(
        stage=1,
        n_layers=3,
        parent_version=None,
        weights_sha256=sha,
        optimizer_sha256=save_optimizer({}, out),
        stage_key="key-1",
        growth="none",
        data_cursor=0,
        global_step=0,
        config_hash="c",
        code_version="v",
        val_loss=5.0,
    )
    params = StageParams(steps=0, params=1, nproc=1, model=spec.model.model_dump(), train=spec.train.model_dump())
    client = registry.client()
    # an attempt that died after logging its run and artifacts, before create_model_version
    exp = client.create_experiment(spec.experiment, artifact_location=registry.artifact_location)
    orphan = client.create_run(exp, run_name="stage-1", tags=tags.to_tags()).info.run_id
    client.log_artifacts(orphan, str(out), "model")

    ref = register(registry, spec.model_name, spec.experiment, model_dir=out, tags=tags, params=params, metrics={})
    again = register(registry, spec.model_name, spec.experiment, model_dir=out, tags=tags, params=params, metrics={})

    assert again.version == ref.version == "1" and again.run_id == ref.run_id != orphan
    assert len(client.search_model_versions("name = 'staged-smoke'")) == 1
    live = client.search_runs([exp], filter_string="tags.stage_key = 'key-1'")
    assert [r.info.run_id for r in live] == [ref.run_id]
    assert client.get_run(orphan).info.lifecycle_stage == "deleted"
    assert len(client.search_runs([exp], run_view_type=ViewType.ALL)) == 2
    assert str(client.get_model_version_by_alias("staged-smoke", "stage-1").version) == "1"
