"""What a person sees in the Prefect and MLflow UIs: the flow run's name and tags, artifacts per stage and
per pipeline, a failure report, and in MLflow one parent run per pipeline over a nested run per stage."""

from pathlib import Path

import pytest
import yaml
from mlflow.entities import ViewType
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId
from repo import REPO_ROOT

from flows.staged import staged_training
from models.data.bytes import ByteCorpus
from tasks.config import load_config, pipeline_hash, resolve_config
from tasks.publish.monitor import stage_markdown
from tasks.publish.report import markdown_summary
from tasks.registry import Pipeline, PipelineRun, Registry

pytestmark = pytest.mark.integration
SMOKE = REPO_ROOT / "configs" / "smoke.yaml"
OVERRIDES = ["stages.0.steps=12", "stages.1.steps=6", "stages.2.steps=4"]


def _flow_run(state):
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        ids = FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
        task_runs = client.read_task_runs(flow_run_filter=ids)
    return run, {a.key: a for a in artifacts}, task_runs


@pytest.fixture(scope="module")
def watched(prefect_harness, tmp_path_factory):
    """The smoke pipeline in the form a deployment passes it (YAML path + overrides), then the same again."""
    workdir = tmp_path_factory.mktemp("watched")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        first = staged_training(str(SMOKE), str(workdir), overrides=OVERRIDES, return_state=True)
        registry = Registry.resolve(workdir)
        runs_after_first = registry.client().search_runs([_experiment(registry)], run_view_type=ViewType.ALL)
        rerun = staged_training(str(SMOKE), str(workdir), overrides=OVERRIDES, return_state=True)
    return registry, first, rerun, runs_after_first


def _experiment(registry: Registry) -> str:
    return registry.client().get_experiment_by_name("staged-smoke").experiment_id


def test_the_flow_run_is_named_and_tagged_after_the_pipeline(watched):
    _, first, rerun, _ = watched
    expected = f"staged-smoke-{pipeline_hash(load_config(SMOKE, OVERRIDES))}"
    for state in (first, rerun):
        run, _, task_runs = _flow_run(state)
        assert run.name == expected and "staged-smoke" in run.tags
        assert sorted(t.name for t in task_runs if t.name.startswith("stage-")) == [
            "stage-1-3L",
            "stage-2-6L",
            "stage-3-12L",
        ]


def test_each_stage_publishes_a_summary_and_the_flow_a_table_with_throughput(watched):
    _, first, _, _ = watched
    results = first.result()
    _, artifacts, task_runs = _flow_run(first)
    stage_runs = {t.name: t.id for t in task_runs if t.name.startswith("stage-")}
    for r, before in zip(results, [None, results[0].val_loss, results[1].val_loss]):
        summary = artifacts[f"staged-smoke-stage-{r.ref.stage}-summary"]
        assert summary.type == "markdown"
        md = summary.data
        assert (
            f"| val loss after growth | {r.val_loss_init:.4f} |" in md
            and f"| val loss after training | {r.val_loss:.4f} |" in md
        )
        assert f"| val loss before growth (parent) | {before:.4f} |" in md if before else "none (first stage)" in md
        assert (
            f"| tokens (bytes) | {r.tokens:,} |" in md
            and "tokens/s" in md
            and f"models:/staged-smoke/{r.ref.version}" in md
        )
        assert "](http" not in md  # an embedded store has no pages to link to
        progress = artifacts[f"staged-smoke-stage-{r.ref.stage}"]  # sent beside the training, complete at the end
        assert progress.type == "progress" and float(progress.data) == 100.0
        assert progress.task_run_id == stage_runs[f"stage-{r.ref.stage}-{r.ref.n_layers}L"]
    assert not any(k.endswith(("-run", "-version", "-failure")) for k in artifacts)
    assert r.tokens == 4 * 8 * 32  # the last stage: steps x batch x context
    table = artifacts["staged-smoke-summary"]
    assert table.type == "table" and '"tokens/s"' in table.data


def test_mlflow_has_one_parent_run_over_a_nested_run_per_stage(watched, tmp_path):
    registry, first, _, _ = watched
    client, results = registry.client(), first.result()
    run, _, _ = _flow_run(first)
    parents = client.search_runs([_experiment(registry)], filter_string="tags.run_kind = 'pipeline'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == run.name and parent.info.status == "FINISHED"
    assert parent.data.tags["prefect_flow_run_id"] == str(run.id) and run.name.endswith(parent.data.tags["config_hash"])
    pipeline_yaml = Path(client.download_artifacts(parent.info.run_id, "config/pipeline.yaml", str(tmp_path)))
    assert yaml.safe_load(pipeline_yaml.read_text())["stages"][0]["steps"] == 12
    assert {f.path for f in client.list_artifacts(parent.info.run_id, "summary")} == {
        "summary/staged-smoke-loss.png",
        "summary/summary.md",
    }

    children = client.search_runs(
        [_experiment(registry)], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    children = sorted(children, key=lambda c: c.info.run_name)
    assert [c.info.run_name for c in children] == ["stage-1", "stage-2", "stage-3"]
    assert [c.info.run_id for c in children] == [r.ref.run_id for r in results]
    specs = load_config(SMOKE, OVERRIDES).stage_specs()
    digest = ByteCorpus(specs[0].data, specs[0].model.context, specs[0].seed).digest()
    start = 0
    for child, spec, r in zip(children, specs, results):
        rid = child.info.run_id
        stage_yaml = Path(client.download_artifacts(rid, "config/stage.yaml", str(tmp_path / str(spec.index))))
        assert yaml.safe_load(stage_yaml.read_text()) == spec.model_dump(mode="json")
        assert "card/loss.png" in {
            f.path for f in client.list_artifacts(rid, "card")
        }  # the curves of all stages so far
        p = child.data.params
        assert (p["data.corpus_sha256"], int(p["data.cursor_start"])) == (digest, start)
        assert int(p["data.cursor_end"]) == r.ref.data_cursor == start + spec.train.steps * spec.train.batch_size
        (used,) = child.inputs.dataset_inputs
        assert used.dataset.digest == digest[:16] and used.dataset.source_type == "local"
        assert {t.key: t.value for t in used.tags} == {
            "mlflow.data.context": "training",
            "cursor_start": str(start),
            "cursor_end": p["data.cursor_end"],
        }
        assert child.data.metrics["tokens_per_s"] == pytest.approx(r.tokens_per_s) and r.tokens_per_s > 0
        step_times = client.get_metric_history(rid, "step_time_s")
        assert [m.step for m in step_times] == list(range(2, spec.train.steps + 1)) and all(
            m.value > 0 for m in step_times
        )
        assert child.data.tags["prefect_flow_run_id"] == str(run.id)
        start = r.ref.data_cursor


def test_a_rerun_that_skips_every_stage_adds_no_runs_and_no_stage_artifacts(watched):
    registry, _, rerun, runs_after_first = watched
    assert all(r.skipped for r in rerun.result())
    runs = registry.client().search_runs([_experiment(registry)], run_view_type=ViewType.ALL)
    assert sorted(r.info.run_id for r in runs) == sorted(r.info.run_id for r in runs_after_first)
    _, artifacts, _ = _flow_run(rerun)
    assert not any(k.startswith("staged-smoke-stage-") for k in artifacts) and "staged-smoke-summary" in artifacts


def test_a_failing_stage_leaves_a_failure_report_in_prefect_and_mlflow(prefect_harness, workdir, tmp_path):
    config = load_config(
        SMOKE,
        [
            "checkpoint.every=1",
            "stages.0.steps=5",
            "stages.0.train.lr=1e30",
            "stages.0.train.grad_clip=1e30",
            "stages.0.train.warmup_steps=0",
        ],
    )
    state = staged_training(config, str(workdir), return_state=True)
    assert state.is_failed() and "stage 1: loss is" in str(state.result(raise_on_failure=False))  # propagated as before
    _, artifacts, _ = _flow_run(state)
    failure = artifacts["staged-smoke-failure"]
    assert failure.type == "markdown"
    for line in [
        "| what failed | `NonFiniteLoss`: loss is",
        "| stage | 1 (3 layers) |",
        "| while | training |",
        "| step | at step 2 of 5 |",
        "| last good checkpoint | step 1 (`",
        "/step-00000001`) |",
    ]:
        assert line in failure.data, line
    registry = Registry.resolve(workdir)
    (parent,) = registry.client().search_runs([_experiment(registry)], filter_string="tags.run_kind = 'pipeline'")
    assert parent.info.status == "FAILED"
    report = Path(registry.client().download_artifacts(parent.info.run_id, "failures/stage-1.md", str(tmp_path)))
    assert report.read_text() == failure.data


def test_a_pipeline_keeps_its_parent_run_until_it_finishes(workdir):
    """A rerun after a crash or a failure continues under the same parent; a finished one is never reopened."""
    registry = Registry.resolve(workdir)
    pipeline = Pipeline(
        model_name="m", experiment="m", config_hash="abcd1234", flow_run_id="flow-1", config_yaml="seed: 0\n"
    )

    def handle(flow_run_id: str = "flow-1") -> PipelineRun:  # what one flow run holds
        p = pipeline.model_copy(update={"flow_run_id": flow_run_id})
        return PipelineRun(registry.client(), registry.artifact_location, p)

    assert handle().find() is None  # nothing trained: nothing created
    runs = handle()
    first = runs.open()
    assert runs.open() == first and handle().open() == first
    runs.fail()
    resumed = handle("flow-2").open()
    run = registry.client().get_run(first)
    assert resumed == first and run.info.status == "RUNNING" and run.data.tags["prefect_flow_run_id"] == "flow-2"
    later = handle("flow-2")
    later.finish()
    assert later.run_id == first and registry.client().get_run(first).info.status == "FINISHED"
    assert handle().find() is None
    assert handle().open() != first


def test_links_point_at_the_mlflow_server_pages_only_for_a_server():
    def server(uri: str) -> str | None:
        return Registry(tracking_uri=uri).server

    assert server("http://127.0.0.1:5000/") == "http://127.0.0.1:5000"
    assert server("https://mlflow.example.org") == "https://mlflow.example.org"
    assert server("sqlite:////tmp/w/mlflow.db") is None and server("file:///tmp/mlruns") is None
    assert Registry(tracking_uri="sqlite:////tmp/w/mlflow.db").run_page("7", "abc") is None
    h = Registry(tracking_uri="http://h:5000")
    assert h.run_page("7", "abc") == "http://h:5000/#/experiments/7/runs/abc"
    assert h.version_page("staged-gpt", "3") == "http://h:5000/#/models/staged-gpt/versions/3"


def test_markdown_links_to_the_run_and_version_pages(watched):
    _, first, _, _ = watched
    results = first.result()
    links = {
        "MLflow run page": "http://h:5000/#/experiments/1/runs/x",
        "model version page": "http://h:5000/#/models/staged-smoke/versions/1",
    }
    md = stage_markdown(results[0], None, links)
    assert "| MLflow run page | [MLflow run page](http://h:5000/#/experiments/1/runs/x) |" in md
    summary = markdown_summary(results, Registry(tracking_uri="http://h:5000"), "http://h:5000/#/experiments/1/runs/p")
    assert (
        "(http://h:5000/#/models/staged-smoke/versions/3)" in summary
        and "(http://h:5000/#/experiments/1/runs/p)" in summary
    )


def test_the_config_parameter_resolves_the_same_whatever_its_form(tmp_path):
    copy = tmp_path / "smoke.yaml"
    copy.write_text(SMOKE.read_text())
    loaded = resolve_config(str(copy), OVERRIDES)
    assert resolve_config(str(copy), OVERRIDES) == loaded  # the flow-run name and the flow body agree
    assert resolve_config(loaded) is loaded and pipeline_hash(resolve_config(SMOKE, OVERRIDES)) == pipeline_hash(loaded)
    copy.write_text(SMOKE.read_text().replace("seed: 0", "seed: 1"))
    assert resolve_config(str(copy), OVERRIDES).seed == 1
    assert pipeline_hash(resolve_config(None)) != pipeline_hash(loaded)
