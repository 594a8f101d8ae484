import os

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
# The test models are tiny: a second OpenMP thread only adds synchronisation (and spins against any
# other load on a 2-core machine). Subprocesses the tests start inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (~10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty workdir with the embedded MLflow store (no MLFLOW_TRACKING_URI from the environment)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "work"
