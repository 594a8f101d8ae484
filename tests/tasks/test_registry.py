"""Registration is exactly-once: a crash between logging the run and creating the version leaves an
orphan run that the next attempt deletes once it is over for sure (never a run that may still be live);
a version with the stage key is never created twice, and racing registrations keep the lowest version."""

from mlflow.entities import ViewType
from repo import REPO_ROOT

from models.families.gpt import GPT
from tasks.config import load_config
from tasks.registry import Registry, register
from tasks.store import save_model, save_optimizer
from tests.versions import stage1_tags, stage_params

SMOKE = REPO_ROOT / "configs" / "smoke.yaml"


def test_an_orphan_run_is_cleaned_up_and_a_second_register_returns_the_same_version(workdir, tmp_path):
    registry, spec = Registry.resolve(workdir), load_config(SMOKE).stage_specs()[0]
    out = tmp_path / "model"
    sha = save_model(GPT(spec.model), out)
    tags = stage1_tags(sha, "key-1", optimizer_sha256=save_optimizer({}, out))
    params = stage_params(spec)
    client = registry.client()
    # an attempt that failed after logging its run and artifacts, before create_model_version (its run FAILED)
    exp = client.create_experiment(spec.experiment, artifact_location=registry.artifact_location)
    orphan = client.create_run(exp, run_name="stage-1", tags=tags.to_tags()).info.run_id
    client.log_artifacts(orphan, str(out), "model")
    client.set_terminated(orphan, "FAILED")
    # another attempt of the same stage, still registering (RUNNING, started just now): it may be live
    live_attempt = client.create_run(exp, run_name="stage-1", tags=tags.to_tags()).info.run_id

    ref = register(registry, spec.model_name, spec.experiment, model_dir=out, tags=tags, params=params, metrics={})
    again = register(registry, spec.model_name, spec.experiment, model_dir=out, tags=tags, params=params, metrics={})

    assert again.version == ref.version == "1" and again.run_id == ref.run_id != orphan
    assert len(client.search_model_versions("name = 'staged-smoke'")) == 1
    live = client.search_runs([exp], filter_string="tags.stage_key = 'key-1'")
    assert {r.info.run_id for r in live} == {ref.run_id, live_attempt}  # the live attempt's run is untouched
    assert client.get_run(orphan).info.lifecycle_stage == "deleted"
    assert len(client.search_runs([exp], run_view_type=ViewType.ALL)) == 3
    assert str(client.get_model_version_by_alias("staged-smoke", "stage-1").version) == "1"
    assert ref.manifest_sha256  # the whole directory is in its manifest


def test_a_racing_registration_that_lost_keeps_the_winner(workdir, tmp_path):
    """What a loser of a race sees: a version with its key was created before its own; it deletes its own
    version and run and returns the winner (the lowest-numbered version)."""
    registry, spec = Registry.resolve(workdir), load_config(SMOKE).stage_specs()[0]
    out = tmp_path / "model"
    tags = stage1_tags(save_model(GPT(spec.model), out), "key-race")
    params = stage_params(spec)
    winner = register(registry, spec.model_name, spec.experiment, model_dir=out, tags=tags, params=params, metrics={})
    client = registry.client()
    # the loser passed its "already registered?" check before the winner's version existed: replay that by
    # creating its version the way register does, then settling as register does
    from tasks.registry.client import find_version

    run = client.create_run(client.get_experiment_by_name(spec.experiment).experiment_id, tags=tags.to_tags())
    lost = client.create_model_version(
        spec.model_name, source=winner.source, run_id=run.info.run_id, tags=tags.to_tags()
    )
    assert find_version(client, spec.model_name, "key-race").version == winner.version == "1" != str(lost.version)


def test_a_run_created_for_training_is_kept_while_it_logs_and_becomes_the_versions_run(workdir, tmp_path):
    """With train.system_metrics a stage's run exists from the start of its training (tasks/registry/monitor.py):
    an attempt's registration deletes such a run only when it has been silent for STALE_RUN_S (a long stage started
    hours ago but still logging its system metrics is live), and registers into its own one."""
    import time

    from mlflow.entities import Metric

    from tasks.registry import StageRunExtras
    from tasks.registry.client import STALE_RUN_S
    from tasks.registry.schema import stage_key_tags

    registry, spec = Registry.resolve(workdir), load_config(SMOKE).stage_specs()[0]
    out = tmp_path / "model"
    tags = stage1_tags(save_model(GPT(spec.model), out), "key-long", optimizer_sha256=save_optimizer({}, out))
    client = registry.client()
    exp = client.create_experiment(spec.experiment, artifact_location=registry.artifact_location)
    now_ms, long_ago = int(time.time() * 1000), int((time.time() - 2 * STALE_RUN_S) * 1000)
    run = {k: client.create_run(exp, start_time=long_ago, tags=stage_key_tags("key-long")).info.run_id for k in "abc"}
    # a: still training, its monitor logged a moment ago; b: died long ago, silent since; c: this attempt's own
    client.log_batch(run["a"], metrics=[Metric("system/cpu_utilization_percentage", 50.0, now_ms, 7)])
    client.log_batch(run["b"], metrics=[Metric("system/cpu_utilization_percentage", 50.0, long_ago, 0)])
    ref = register(
        registry,
        spec.model_name,
        spec.experiment,
        model_dir=out,
        tags=tags,
        params=stage_params(spec),
        metrics={"val_loss": [(0, 1.0)]},
        extras=StageRunExtras(run_id=run["c"]),
    )
    assert ref.run_id == run["c"]
    mine = client.get_run(run["c"])
    assert mine.info.status == "FINISHED" and mine.data.tags["weights_sha256"] == tags.weights_sha256
    assert mine.data.params and mine.data.metrics["val_loss"] == 1.0
    assert client.get_run(run["a"]).info.lifecycle_stage == "active"  # live: left alone
    assert client.get_run(run["b"]).info.lifecycle_stage == "deleted"  # over for sure
