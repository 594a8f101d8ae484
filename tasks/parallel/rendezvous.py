"""torchrun whose rendezvous listens on the address it names, never on every interface.

    python -m tasks.parallel.rendezvous [torchrun arguments]   # torchrun with --rdzv-backend staged-c10d

torch's TCPStore server binds ``[::]`` / ``0.0.0.0`` whatever host it is given (checked in torch
2.13: ``TCPStore("127.0.0.1", port, is_master=True)`` listens on ``[::]:port``). Two stores listen
during a torchrun: the c10d rendezvous store (on ``--rdzv-endpoint``) and the process group's store
(``MASTER_ADDR:MASTER_PORT``, rank 0). Both are made here on a socket bound to that host only and
handed to TCPStore (``master_listen_fd``):

- ``staged-c10d``: torch's own c10d rendezvous (``C10dRendezvousBackend`` + ``create_handler``), whose
  store binds the endpoint's host. The node that can bind it hosts the store (``127.0.0.1`` on every
  simulated node: the first; on Kubernetes pod 0's service name resolves to pod 0's own IP, which only
  pod 0 can bind); the others connect to it.
- ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``: the agent does not host a second store for the ranks;
  rank 0 creates the process group's store itself with :func:`bound_store` (tasks/parallel/worker.py).
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from datetime import timedelta

import torch.distributed as dist
from torch.distributed.elastic.rendezvous import RendezvousParameters, rendezvous_handler_registry
from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import create_handler
from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint

BACKEND = "staged-c10d"
DEFAULT_PORT = 29400  # torch's c10d rendezvous default


def _listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def bound_store(
    host: str, port: int, *, is_master: bool, world_size: int | None = None, multi_tenant: bool = False, timeout_s=300
) -> dist.TCPStore:
    """A TCPStore on ``host:port``; the server's socket is bound to ``host`` alone (port 0: any free one)."""
    timeout = timedelta(seconds=timeout_s)
    if not is_master:
        return dist.TCPStore(host, port, world_size, False, timeout=timeout, multi_tenant=multi_tenant)
    sock = _listen(host, port)
    port = sock.getsockname()[1]
    return dist.TCPStore(
        host,
        port,
        world_size,
        True,
        timeout=timeout,
        wait_for_workers=False,
        multi_tenant=multi_tenant,
        master_listen_fd=sock.detach(),  # the store owns the socket from here on
        use_libuv=True,
    )


class _Backend(C10dRendezvousBackend):
    """torch's c10d rendezvous state on our store, under this backend's name (torchrun checks it)."""

    @property
    def name(self) -> str:
        return BACKEND


def _handler(params: RendezvousParameters):
    """torch's c10d rendezvous, its store bound to the endpoint's host: hosted here if this node can bind it."""
    host, port = parse_rendezvous_endpoint(params.endpoint, default_port=DEFAULT_PORT)
    timeout = int(params.get_as_int("read_timeout", 60))
    try:
        store = bound_store(host, port, is_master=True, multi_tenant=True, timeout_s=timeout)
    except OSError as e:
        if e.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            raise
        store = bound_store(host, port, is_master=False, multi_tenant=True, timeout_s=timeout)
    return create_handler(store, _Backend(store, params.run_id), params)


def main(argv: list[str]) -> None:
    from torch.distributed import run

    os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"  # rank 0 hosts the group's store, bound (worker.py)
    rendezvous_handler_registry.register(BACKEND, _handler)
    run.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
