"""The production path on one machine: `staged servers up` (Postgres, S3, Prefect server + process
worker, MLflow server), `prefect deploy` from deploy/prefect.yaml, a run of the smoke config
triggered on the server and executed by the worker from a git clone. Nothing is mocked."""

import hashlib
from pathlib import Path

import pytest

from deploy.local.servers import BUCKET
from tests.deployed import api

pytestmark = pytest.mark.integration


def test_the_worker_ran_the_deployment_to_completion(deployed_run):
    servers, flow_run = deployed_run
    assert flow_run.state.is_completed(), flow_run.state
    assert flow_run.work_pool_name == "staged-process"
    deployment = api(servers, lambda c: c.read_deployment(flow_run.deployment_id))
    assert deployment.name == "on-demand"
    assert deployment.pull_steps[0].keys() == {"prefect.deployments.steps.git_clone"}


def test_three_versions_with_lineage_in_the_postgres_backed_registry(deployed_run):
    servers, _ = deployed_run
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=servers.urls["mlflow"])
    versions = sorted(client.search_model_versions("name='staged-smoke'"), key=lambda v: int(v.version))
    assert [v.tags["stage"] for v in versions] == ["1", "2", "3"]
    assert [v.tags["n_layers"] for v in versions] == ["3", "6", "12"]
    assert [v.tags["parent_version"] for v in versions] == ["", "1", "2"]
    import psycopg

    with psycopg.connect(servers.postgres_url("mlflow")) as conn:  # the rows really are in Postgres
        rows = conn.execute(
            "SELECT version FROM model_versions WHERE name = 'staged-smoke' ORDER BY version"
        ).fetchall()
    assert [r[0] for r in rows] == [1, 2, 3]


def test_weights_behind_mlflow_and_checkpoints_in_the_s3_bucket(deployed_run):
    """MLflow's artifacts go through its (authenticated) proxy to the servers' disk; checkpoints to S3."""
    servers, _ = deployed_run
    import boto3
    from mlflow import MlflowClient

    s3 = boto3.client(
        "s3",
        endpoint_url=servers.urls["s3"],
        region_name="us-east-1",
        aws_access_key_id=servers.client_env()["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=servers.client_env()["AWS_SECRET_ACCESS_KEY"],
    )
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
    ]
    artifacts = Path(servers.dir) / "artifacts"
    client = MlflowClient(tracking_uri=servers.urls["mlflow"])
    for v in client.search_model_versions("name='staged-smoke'"):
        (weights,) = [p for p in artifacts.rglob("model.safetensors") if v.run_id in str(p)]
        assert hashlib.sha256(weights.read_bytes()).hexdigest() == v.tags["weights_sha256"]
        assert v.tags["manifest_sha256"]
    assert any(k.startswith("smoke/checkpoints/") for k in keys)  # storage.uri override: in-stage checkpoints


def test_the_nightly_deployment_has_its_cron_schedule_on_the_server(deployed_run):
    servers, _ = deployed_run
    nightly = api(servers, lambda c: c.read_deployment_by_name("staged-training/nightly"))
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in nightly.schedules] == [("0 2 * * *", "UTC", True)]
    assert nightly.work_pool_name == "staged-process"
    assert nightly.parameters["config"] == "configs/demo.yaml"
