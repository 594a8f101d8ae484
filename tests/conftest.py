import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the tests that run flows (~10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield
