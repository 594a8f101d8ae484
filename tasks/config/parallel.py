"""``stages.<i>.parallel``: how many processes train a stage under torchrun, and how they shard it."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tasks.config.model_section import Strict

# host:port, host a DNS name, an IPv4 address or a bracketed IPv6 one
_ENDPOINT = re.compile(r"^(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})$")
_ALL_INTERFACES = {"0.0.0.0", "[::]", "[0:0:0:0:0:0:0:0]"}


class ParallelConfig(Strict):
    """``stages.<i>.parallel``: the processes that train a stage under torchrun. Not in the stage key: the
    global batch and the steps stay, so the weights are a one-process run's up to float summation order."""

    # ddp: every rank holds the whole model, gradients are all-reduced; fsdp: FSDP2 (fully_shard per
    # transformer block and at the root) shards parameters, gradients and AdamW moments across the ranks
    strategy: Literal["ddp", "fsdp"] = "ddp"
    nproc: int = Field(1, ge=1)  # processes per node: one GPU each with NCCL, or CPU processes with gloo
    nnodes: int = Field(1, ge=1)  # machines (pods); every node runs torchrun with the same rendezvous endpoint
    # host:port of the c10d rendezvous, served by the stage task's node and bound to that address only
    # (on Kubernetes: pod 0's name in the headless service); required when nnodes > 1
    rdzv_endpoint: str | None = None

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes

    @field_validator("rdzv_endpoint")
    @classmethod
    def _host_and_port(cls, endpoint: str | None) -> str | None:
        if endpoint is None:
            return None
        m = _ENDPOINT.match(endpoint)
        if not m or not 0 < int(m["port"]) < 65536:
            raise ValueError(f"rdzv_endpoint {endpoint!r} is not host:port")
        if m["host"] in _ALL_INTERFACES:
            raise ValueError(f"rdzv_endpoint {endpoint!r} would listen on every interface: name node 0's address")
        return endpoint

    @model_validator(mode="after")
    def _makes_sense(self) -> ParallelConfig:
        if self.strategy == "fsdp" and self.world_size == 1:
            raise ValueError("strategy fsdp with 1 process shards nothing: set nproc (or nnodes) above 1, or use ddp")
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError(f"nnodes {self.nnodes} needs rdzv_endpoint (host:port of node 0) for the rendezvous")
        return self
