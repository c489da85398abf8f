"""Token revocation and the per-user publish budget on one node (memory broker); the
cluster-wide behaviour is in tests/test_budgets.py."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from hubbub.hub.auth import Identity
from hubbub.hub.budgets import UserBudget
from hubbub.hub.errors import Disconnect, RateLimited, Unauthorized
from hubbub.hub.revocation import Revocations
from hubbub.hub.settings import Rate
from tests.conftest import API_KEY, Node, token
from tests.wsclient import WS

KEY = {"Authorization": f"Bearer {API_KEY}"}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_revocation_refuses_tokens_issued_until_the_cutoff() -> None:
    clock = Clock(1000.0)
    table = Revocations(keep=100.0, clock=clock)
    assert not table.refuses("alice", None)
    table.add("alice", 990)
    assert table.refuses("alice", 990) and table.refuses("alice", 10)
    assert table.refuses("alice", None) and table.refuses("alice", "990")
    assert table.refuses("alice", True)  # not a number: as good as none
    assert not table.refuses("alice", 991) and not table.refuses("bob", 10)
    table.add("alice", 980)  # an older cutoff never replaces a later one
    assert table.refuses("alice", 985)
    clock.now = 1089.0
    assert table.refuses("alice", 990)
    clock.now = 1091.0  # kept for ``keep`` seconds after the cutoff only
    assert not table.refuses("alice", 990)
    table.prune()
    assert len(table) == 0
    table.add("carol", 900)  # already past keep: ignored
    assert len(table) == 0
    table.merge({"dave": 1050.0, "erin": 1.0})
    assert set(table.table) == {"dave"}


def test_user_budget_on_one_node() -> None:
    budget = UserBudget(Rate(0.01, 3.0), None)
    assert [budget.take_local("alice") for _ in range(3)] == [False] * 3  # no shared store
    with pytest.raises(RateLimited) as info:
        budget.take_local("alice")
    assert "HUB_USER_PUBLISH_RATE" in info.value.message and info.value.temporary
    assert budget.take_local("bob") is False
    off = UserBudget(Rate(0.0, 0.0), None)
    assert all(off.take_local("alice") is False for _ in range(1000))


async def test_user_budget_leases_never_exceed_the_shared_bucket() -> None:
    """Two nodes sharing one store (what Redis is to a cluster): together they never publish
    more than the shared bucket holds, leases grow while spent in time, and what stays unspent
    in the nodes' leases is at most ``burst / 20`` each."""
    from hubbub.hub.brokers.memory_state import MemoryStateStore

    store = MemoryStateStore()
    rate = Rate(0.001, 100.0)  # 5 tokens per lease at most
    nodes = [UserBudget(rate, store), UserBudget(rate, store)]
    calls = 0
    take_many = store.take_many

    async def counting(*args: Any) -> int:
        nonlocal calls
        calls += 1
        return await take_many(*args)

    store.take_many = counting  # type: ignore[method-assign]
    passed = 0
    for i in range(150):
        try:
            await nodes[i % 2].take("alice")
            passed += 1
        except RateLimited:
            pass
    assert 100 - 2 * 5 <= passed <= 100
    assert calls < 60  # leases of up to 5: far fewer calls than publishes
    assert all(n.max_lease == 5 for n in nodes)


async def test_a_session_revoked_while_opening_is_refused(node_factory: Any) -> None:
    """A token checked before its user's revocation reached the node and registered after it
    (the kick found no session to close) is refused at registration with 4509."""
    node: Node = await node_factory()
    ident = node.hub.auth.authenticate(token("alice", iat=int(time.time()) - 5))
    node.hub.auth.revocations.add("alice", int(time.time()))
    with pytest.raises(Disconnect) as info:
        await node.hub.open_session(ident, "ws")
    assert info.value.code == 4509 and not node.hub.sessions
    assert await node.hub.state.connection_count("alice") == 0


async def test_revoke_on_a_memory_node(node_factory: Any) -> None:
    node: Node = await node_factory(user_publish_rate=Rate(0.01, 2.0))
    old = token("alice", iat=int(time.time()) - 5)
    ws = await WS.connect(node.ws_url, old)
    async with httpx.AsyncClient(base_url=node.url, timeout=5) as http:
        for bad in ({"revoke": "yes"}, {"revoke": 1}):
            r = await http.post("/v1/users/alice/disconnect", json=bad, headers=KEY)
            assert r.status_code == 400 and "revoke" in r.json()["error"]["message"]
        r = await http.post("/v1/users/alice/disconnect", json={"revoke": False}, headers=KEY)
        assert r.json() == {"sessions": 1}  # a plain kick: the token still works
        assert (await ws.closed())[0] == 4509
        ws = await WS.connect(node.ws_url, old)
        r = await http.post("/v1/users/alice/disconnect", json={"revoke": True}, headers=KEY)
        assert r.status_code == 200 and r.json()["sessions"] == 1
        assert (await ws.closed())[0] == 4509
        with pytest.raises(Unauthorized) as info:
            node.hub.auth.authenticate(old)
        assert info.value.reason == "revoked"
        refused = await WS.connect(node.ws_url, old, welcome=False)
        assert (await refused.closed())[0] == 4501
    # A refresh with a revoked token is refused like any bad token; the session stays.
    dan = await WS.connect(node.ws_url, token("dan"))
    node.hub.auth.revocations.add("dan", int(time.time()))  # the table alone: no kick
    f = await dan.call({"type": "refresh", "token": token("dan")})
    assert f["type"] == "error" and f["code"] == "forbidden"
    assert (await dan.call({"type": "ping"}))["type"] == "reply"
    # HTTP publishes of a client token draw on the user's budget too (here: 2).
    hdr = {"Authorization": f"Bearer {token('carol')}"}
    async with httpx.AsyncClient(base_url=node.url, timeout=5) as http:
        codes = [
            (await http.post("/v1/rooms/r/messages", json={"data": i}, headers=hdr)).status_code
            for i in range(3)
        ]
        assert codes == [201, 201, 429]
    for _ in range(5):  # the API key is never metered by the user budget
        await node.hub.publish(Identity("svc", api_key=True, scope="k"), "r", 1)
