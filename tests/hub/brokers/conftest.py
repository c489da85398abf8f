"""Fixtures of the broker tests: a real three-shard Redis Cluster for the contract suite, and
``make`` / ``make_node`` for the Redis broker's and state store's own tests."""

from __future__ import annotations

import secrets
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from hubbub.hub.brokers.redis import RedisBroker
from hubbub.hub.brokers.redis_state import RedisStateStore
from tests.conftest import RedisProc, free_port, need_tool
from tests.hub.brokers.brokertools import Recorder

TIMEOUT = 0.5  # broker call timeout of the brokers ``make`` starts
Make = Callable[..., Awaitable[tuple[RedisBroker, Recorder]]]
MakeNode = Callable[..., Awaitable[tuple[RedisBroker, RedisStateStore, Recorder]]]


@dataclass
class RedisClusterProcs:
    nodes: list[RedisProc]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0?cluster=true"


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcs]:
    """Three redis-server processes in cluster mode, no replicas, all slots assigned."""
    cli = need_tool("redis-cli")
    tmp = tempfile.mkdtemp(prefix="hubbub-cluster-")
    nodes = []
    for _ in range(3):
        port = cluster_port()
        extra = ("--cluster-enabled", "yes", "--cluster-config-file", f"{tmp}/nodes-{port}.conf",
                 "--cluster-node-timeout", "2000")  # fmt: skip
        nodes.append(RedisProc(port=port, extra=extra).start())
    try:
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            states = [
                subprocess.run(
                    [cli, "-p", str(n.port), "CLUSTER", "INFO"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                for n in nodes
            ]
            if all("cluster_state:ok" in s for s in states):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("redis cluster did not become ready")
        yield RedisClusterProcs(nodes)
    finally:
        for n in nodes:
            n.stop()


@pytest.fixture
async def make(redis_proc: RedisProc) -> AsyncIterator[Make]:
    """``await make(url=..., **options)``: a started RedisBroker (own key prefix per test) and
    its recording listener; all are closed after the test."""
    prefix = f"f{secrets.token_hex(3)}:"
    started: list[RedisBroker] = []

    async def factory(url: str | None = None, **kw: Any) -> tuple[RedisBroker, Recorder]:
        opts: dict[str, Any] = {
            "prefix": prefix,
            "timeout": TIMEOUT,
            "probe_interval": 0.2,
            "probe_timeout": 0.8,
            **kw,
        }
        broker = RedisBroker(url or redis_proc.url, **opts)
        listener = Recorder()
        await broker.start(listener, secrets.token_hex(4))
        started.append(broker)
        return broker, listener

    yield factory
    for b in started:
        await b.close()


@pytest.fixture
async def make_node(make: Make) -> AsyncIterator[MakeNode]:
    """``await make_node(presence_ttl=..., **broker options)``: a started RedisBroker, the
    RedisStateStore sharing its connection pool (as a node has them) and the broker's recording
    listener; closed after the test."""
    stores: list[RedisStateStore] = []

    async def factory(
        presence_ttl: float = 30.0, **kw: Any
    ) -> tuple[RedisBroker, RedisStateStore, Recorder]:
        broker, listener = await make(**kw)
        state = RedisStateStore(broker, presence_ttl=presence_ttl)
        await state.start(broker.node)
        stores.append(state)
        return broker, state, listener

    yield factory
    for state in stores:
        await state.close()
