"""Stages of one experiment that log the same corpus at the same moment each get it as their input: MLflow's SQL
store checks for the dataset and then inserts it, unserialized, so all but one racer fail on its unique constraint
unless the registry logs again (tasks/registry/client.py:_log_inputs). Real threads against the session's
Postgres-backed MLflow server, many rounds."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.integration

RACERS, ROUNDS = 8, 6


def _racer(client, start: threading.Barrier, inputs):
    from tasks.registry.client import _log_inputs

    def log(run_id: str) -> None:
        start.wait()  # every racer's request leaves at once
        _log_inputs(client, run_id, inputs)

    return log


def test_racing_stages_all_link_the_one_corpus_dataset(local_servers):
    from mlflow import MlflowClient

    from tasks.registry.runs import corpus_input

    client = MlflowClient(tracking_uri=local_servers.urls["mlflow"])
    exp = client.create_experiment(f"dataset-race-{uuid.uuid4().hex[:8]}")
    for round in range(ROUNDS):
        digest = uuid.uuid4().hex[:16]  # a corpus no run of this experiment logged yet
        inputs = [corpus_input("/data/corpus", digest, 0, 100)]
        runs = [client.create_run(exp).info.run_id for _ in range(RACERS)]
        start = threading.Barrier(RACERS)

        with ThreadPoolExecutor(RACERS) as pool:
            list(pool.map(_racer(client, start, inputs), runs))  # re-raises the first racer's error
        for run_id in runs:
            assert [d.dataset.digest for d in client.get_run(run_id).inputs.dataset_inputs] == [digest], round
