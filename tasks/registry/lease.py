"""A lease in the MLflow registry, so that two gates never move the same alias at once.

    with lease(client, "staged-gpt@champion"):
        read the champion, compare, tag, move the alias        # one gate at a time, whatever the host

MLflow has no compare-and-set, but it numbers model versions itself, in commit order, and never reuses
a number (a deleted version stays as a tombstone). So a ticket is a version of the registered model
``staged.leases`` tagged with the lease's name: the holder is the lowest-numbered live ticket of that
name. Whoever creates a ticket sees every lower-numbered one, so two processes can never both find
themselves lowest. A holder that dies leaves its ticket until it expires (``ttl``); then any waiter
deletes it, by number, so a stale ticket is removed exactly, never a fresh one that reused its name.
Waiting tickets are renewed while they wait; the holder's ``ttl`` must outlast what it does (a gate:
two evaluations, seconds at the demo's sizes).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.registry.schema import LEASE_DESCRIPTION, LEASE_MODEL, LeaseTags, lease_filter


class LeaseTimeout(TimeoutError):
    """The lease stayed taken for the whole wait; the message is one line."""


def _ensure_model(client: MlflowClient) -> None:
    try:
        client.create_registered_model(LEASE_MODEL, description=LEASE_DESCRIPTION)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":  # another process made it first: fine
            raise


def _delete(client: MlflowClient, version: str) -> None:
    try:
        client.delete_model_version(LEASE_MODEL, version)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":  # already removed by another waiter
            raise


@contextmanager
def lease(client: MlflowClient, name: str, ttl: float = 900, wait: float = 1800, poll: float = 0.5) -> Iterator[str]:
    """Hold the lease ``name`` for the block (yields the ticket's version); LeaseTimeout after ``wait`` s."""
    _ensure_model(client)
    owner = f"{socket.gethostname()}:{os.getpid()}"
    tags = LeaseTags(name=name, owner=owner, expires=time.time() + ttl)
    source = f"lease://{name.replace('@', '/')}"  # any absolute URI: a ticket has no files
    ticket = client.create_model_version(LEASE_MODEL, source=source, tags=tags.to_tags(), await_creation_for=0)
    mine = str(ticket.version)
    deadline = time.monotonic() + wait
    try:
        while True:
            live = []
            for ticket in client.search_model_versions(lease_filter(name)):
                # None: its tags are being written right now (created or renewed by a live waiter): live
                seen = LeaseTags.from_tags(ticket.tags)
                if str(ticket.version) != mine and seen is not None and seen.expires < time.time():
                    _delete(client, str(ticket.version))  # its holder died
                else:
                    live.append(int(ticket.version))
            if min(live) == int(mine):
                break
            if time.monotonic() > deadline:
                raise LeaseTimeout(f"lease {name!r} still held by ticket {min(live)} after {wait:.0f} s")
            client.set_model_version_tag(LEASE_MODEL, mine, *LeaseTags.renewal(time.time() + ttl))
            time.sleep(poll)
        yield mine
    finally:
        _delete(client, mine)
