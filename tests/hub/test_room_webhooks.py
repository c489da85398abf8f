"""Per-room webhook events: a ``[[rooms]]`` table's ``webhook_events`` replaces
``HUB_WEBHOOK_EVENTS`` for its rooms (room.*, member.*, message.published); ``[]`` sends none.

Real nodes (uvicorn on a socket), a real HTTP receiver that verifies every request, memory://
for one node and a real redis-server for two. Each test ends on a last expected event that
the same node emits after every other one it might send, so "nothing else came" is decided
by order, not by waiting.
"""

from __future__ import annotations

import secrets
import subprocess
import tomllib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hubbub.hub.auth import Identity
from hubbub.hub.room_options import RoomRules, parse_tables
from hubbub.hub.settings import DEFAULT_WEBHOOK_EVENTS, Settings
from tests.conftest import Node, RedisProc
from tests.helpers import until
from tests.hub.test_webhooks import SVC, fast
from tests.hub.webhook_receiver import WEBHOOK_SECRET, Receiver
from tests.ops.harness import hubbub_cmd
from tests.test_cluster import redis_cli

TABLES = [
    {"pattern": "feed:*", "webhook_events": ["message.published"]},
    {"pattern": "chat:*", "webhook_events": ["member.joined", "member.left"]},
    {"pattern": "quiet:*", "webhook_events": []},
    {"pattern": "big:*", "history_size": 5},  # no webhook_events: HUB_WEBHOOK_EVENTS applies
]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


def user(name: str) -> Identity:
    return Identity(name, api_key=True, scope="t")


def conf(receiver: Receiver, **kw: Any) -> dict[str, Any]:
    return {
        "rooms": parse_tables(TABLES, "hub.toml"),
        "webhook_urls": (receiver.url,),
        "webhook_secret": (WEBHOOK_SECRET,),
        "webhook_vacated_delay": 0.3,
        "shutdown_timeout": 1.0,
        **kw,
    }


def by_room(receiver: Receiver) -> dict[str, list[tuple[str, ...]]]:
    out: dict[str, list[tuple[str, ...]]] = {}
    for t in receiver.types():
        out.setdefault(t[1], []).append(t)
    return out


async def test_each_table_sends_its_events_and_other_rooms_the_global_ones(
    node_factory: Any, receiver: Receiver
) -> None:
    n: Node = await node_factory(**conf(receiver))  # HUB_WEBHOOK_EVENTS at its default
    fast(n.hub)
    rooms = ["feed:a", "chat:a", "quiet:a", "big:a", "lobby"]
    s = await n.hub.open_session(user("alice"), "ws")
    for room in rooms:
        await n.hub.subscribe(s, room, presence=True)
    for room in rooms:
        await n.hub.publish(SVC, room, {"in": room})
    for room in rooms:  # lobby last: its room.vacated is this node's last event
        await n.hub.unsubscribe(s, room)
    await until(lambda: ("room.vacated", "lobby") in receiver.types(), what="lobby vacated")
    default = ["room.occupied", "member.joined", "member.left", "room.vacated"]
    got = by_room(receiver)
    assert [t[0] for t in got.pop("big:a")] == default  # a table without the key
    assert [t[0] for t in got.pop("lobby")] == default  # no table
    assert got == {
        "feed:a": [("message.published", "feed:a")],
        "chat:a": [("member.joined", "chat:a", "alice"), ("member.left", "chat:a", "alice")],
    }  # and nothing at all from quiet:a
    feed = next(e for e in receiver.unique() if e["room"] == "feed:a")
    assert feed["message"]["data"] == {"in": "feed:a"} and feed["message"]["offset"] == 1
    assert receiver.refused == []
    await n.hub.close_session(s)


async def test_per_room_events_across_two_nodes_on_redis(
    node_factory: Any, shared_redis: RedisProc, receiver: Receiver
) -> None:
    prefix = f"rw{secrets.token_hex(3)}:"
    everything = ("room.occupied", "room.vacated", "member.joined", "member.left",
                  "message.published", "user.connected")  # fmt: skip
    settings = conf(
        receiver, broker_url=shared_redis.url, redis_prefix=prefix, broker_timeout=2.0,
        webhook_events=everything,
    )  # fmt: skip
    a: Node = await node_factory(**settings)
    b: Node = await node_factory(**settings)
    fast(a.hub)
    fast(b.hub)
    alice = await a.hub.open_session(user("alice"), "ws")
    for room in ("chat:r", "feed:r", "quiet:r", "lobby"):
        await a.hub.subscribe(alice, room, presence=True)
    bob = await b.hub.open_session(user("bob"), "ws")
    await b.hub.subscribe(bob, "chat:r", presence=True)
    await until(lambda: ("member.joined", "chat:r", "bob") in receiver.types(), what="bob")
    for room in ("feed:r", "quiet:r", "chat:r", "lobby"):
        await b.hub.publish(SVC, room, room)
    for room in ("chat:r", "feed:r", "quiet:r", "lobby"):  # lobby last on node a …
        await a.hub.unsubscribe(alice, room)
    await b.hub.publish(SVC, "lobby", "end")  # … and this last on node b

    def ended() -> bool:
        types = receiver.types()
        return ("room.vacated", "lobby") in types and any(
            e.get("message", {}).get("data") == "end" for e in receiver.unique()
        )

    await until(ended, what="the last event of each node")
    got = by_room(receiver)
    assert Counter(t[0] for t in got.pop("")) == {"user.connected": 2}  # global, no room
    assert Counter(got.pop("lobby")) == {
        ("room.occupied", "lobby"): 1, ("member.joined", "lobby", "alice"): 1,
        ("message.published", "lobby"): 2, ("member.left", "lobby", "alice"): 1,
        ("room.vacated", "lobby"): 1,
    }  # fmt: skip
    assert got == {
        "feed:r": [("message.published", "feed:r")],
        "chat:r": [("member.joined", "chat:r", "alice"), ("member.joined", "chat:r", "bob"),
                   ("member.left", "chat:r", "alice")],
    }  # fmt: skip

    # Rooms without room.* or member.* events make no reports: nothing tracked in Redis.
    def keys(room: str) -> list[str]:
        return redis_cli(
            shared_redis, "--scan", "--pattern", f"{prefix}{{room:{room}}}:wh:*"
        ).split()

    assert keys("feed:r") == [] and keys("quiet:r") == []
    assert keys("lobby") and keys("chat:r")
    await a.hub.close_session(alice)
    await b.hub.close_session(bob)


def test_a_bad_event_name_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(
        '[[rooms]]\npattern = "chat:*"\nwebhook_events = ["member.joined"]\n'
        '[[rooms]]\npattern = "feed:*"\nwebhook_events = ["message.published", "publish"]\n'
    )
    env = {"PATH": "/usr/bin:/bin", "HUB_PORT": "0"}
    argv = [*hubbub_cmd(), "serve", "--config", str(path)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert (
        f"hubbub: configuration error: config file {path}: [[rooms]] #2 (pattern 'feed:*'): "
        "webhook_events must be a list of room events: room.occupied, room.vacated, "
        "member.joined, member.left, message.published: 'publish' is not one of them"
    ) in out.stderr, out.stderr
    path.write_text('[[rooms]]\npattern = "a:*"\nwebhook_events = ["user.connected"]\n')
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "'user.connected' concerns no room (only HUB_WEBHOOK_EVENTS sets it)" in out.stderr


def test_rooms_explain_shows_the_events_and_their_source(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text('[[rooms]]\npattern = "feed:*"\nwebhook_events = ["message.published"]\n')
    env = {"PATH": "/usr/bin:/bin", "HUB_WEBHOOK_URLS": "http://127.0.0.1:9/",
           "HUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
           "HUB_WEBHOOK_EVENTS": "room.occupied,user.connected"}  # fmt: skip

    def explain(room: str) -> str:
        argv = [*hubbub_cmd(), "rooms", "explain", room, "--config", str(path)]
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        line = next(x for x in out.stdout.splitlines() if "webhook_events" in x)
        return " ".join(line.split())

    where = f"[[rooms]] #1 (pattern 'feed:*') in {path}"
    assert explain("feed:x") == f'webhook_events ["message.published"] {where}'
    assert explain("lobby") == 'webhook_events ["room.occupied"] HUB_WEBHOOK_EVENTS'


def test_the_example_of_the_webhooks_page_loads() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "webhooks.md").read_text()
    example = doc.split("## Per-room events", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    rules = RoomRules(Settings(rooms=parse_tables(tomllib.loads(example)["rooms"], "hub.toml")))
    assert rules.get("feed:x").webhook_events == ("message.published",)
    assert rules.get("chat:x").webhook_events == ("member.joined", "member.left")
    assert rules.get("call:x").webhook_events == ()
    assert rules.get("lobby").webhook_events == DEFAULT_WEBHOOK_EVENTS
