"""The gate's lease in the registry, against a real (SQLite) MLflow store."""

import pytest

from tasks.registry import LeaseTimeout, Registry, lease
from tasks.registry.lease import _ensure_model
from tasks.registry.schema import LEASE_MODEL, LeaseTags


def test_a_ticket_whose_tags_are_still_being_written_counts_as_live(tmp_path):
    """Another process's ticket is seen between its creation and its last tag (a concurrency test once caught
    one so, over PostgreSQL): it holds the lease like any live ticket, it is neither an error nor expired."""
    client = Registry.resolve(tmp_path).client()
    _ensure_model(client)
    name = "m@champion"
    partial = {
        k: v for k, v in LeaseTags(name=name, owner="other:1", expires=0).to_tags().items() if "expires" not in k
    }
    other = client.create_model_version(LEASE_MODEL, source="lease://m/champion", tags=partial, await_creation_for=0)
    with pytest.raises(LeaseTimeout, match=f"still held by ticket {other.version}"):
        with lease(client, name, wait=0.5, poll=0.1):
            pass
    assert [str(v.version) for v in client.search_model_versions(f"name = '{LEASE_MODEL}'")] == [str(other.version)]
