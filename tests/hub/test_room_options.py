"""[[rooms]] tables: parsing and its errors, first match wins, explain, digests, the CLI, the
memory broker's per-room history and the cluster-digest vote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hubbub.hub.brokers.memory import MemoryBroker
from hubbub.hub.errors import ConfigError
from hubbub.hub.room_agreement import cluster_digest
from hubbub.hub.room_options import CACHE_SIZE, ROOM_WEBHOOK_EVENTS, RoomRules, parse_tables
from hubbub.hub.settings import DEFAULT_WEBHOOK_EVENTS, WEBHOOK_EVENTS, Settings
from tests.conftest import API_KEY, SECRET

EXAMPLE = """
history_size = 50
[[rooms]]
pattern = "chat:*"
presence = "on"
history_size = 1000
webhook_events = ["member.left", "message.published", "member.joined"]

[[rooms]]
pattern = "feed:*"
client_publish = false
presence = false

[[rooms]]
pattern = "call:*"
signal = true
max_subscribers = 8

[[rooms]]
pattern = "chat:*"
history_size = 5
"""


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "hub.toml"
    path.write_text(text)
    return Settings.load(env or {}, config_file=str(path))


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return str(info.value)


def test_first_matching_table_wins_and_the_rest_is_global(tmp_path: Path) -> None:
    rules = RoomRules(load(tmp_path, EXAMPLE))
    chat, feed, call, other = (rules.get(r) for r in ("chat:a", "feed:a", "call:a", "lobby"))
    assert chat.history_size == 1000 and chat.presence and chat.table is not None
    assert chat.table.index == 1
    assert chat.webhook_events == ("member.joined", "member.left", "message.published")  # sorted
    assert (feed.client_publish, feed.presence, feed.history_size) == (False, False, 50)
    assert call.signal and rules.max_peers("call:a") == 8
    assert other.table is None and other.history_size == 50 and not other.signal
    assert rules.history_of("chat:x") == (1000, 3600.0)
    assert rules.get("chat:a") is chat  # cached


def test_without_tables_nothing_is_looked_up() -> None:
    rules = RoomRules(Settings())
    assert not rules.active and rules.get("anything") is rules.default
    assert rules.is_call_room("call:1") and not rules.is_call_room("chat:1")  # HUB_SIGNAL_ROOMS


def test_signal_rooms_apply_until_a_table_sets_signal() -> None:
    tables = parse_tables([{"pattern": "chat:*", "presence": False}], "f.toml")
    rules = RoomRules(Settings(rooms=tables))
    assert rules.is_call_room("call:1")  # no table says signal: HUB_SIGNAL_ROOMS still counts
    tables = parse_tables([{"pattern": "meet:*", "signal": True}], "f.toml")
    rules = RoomRules(Settings(rooms=tables))
    assert rules.is_call_room("meet:1") and not rules.is_call_room("call:1")


def test_the_cache_is_bounded() -> None:
    rules = RoomRules(Settings(rooms=parse_tables([{"pattern": "a:*"}], "f.toml")))
    for i in range(CACHE_SIZE + 10):
        rules.get(f"r{i}")
    assert len(rules._cache) <= CACHE_SIZE


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("history_size = -1", "history_size must be an integer from 0 to 10000000 (got -1)"),
        ("presence = 3", "presence must be true or false (or on/off) (got 3)"),
        ("presence = 'maybe'", "presence must be true or false (or on/off)"),
        ("colour = 'red'", "unknown key 'colour' (known: pattern, history_size"),
        ("publish_rate = '5'", "publish_rate must be a rate like 20/s"),
        ("max_message_bytes = 0", "max_message_bytes must be a whole number of bytes"),
        ("history_ttl = 'long'", "history_ttl must be a number of seconds"),
        (
            "webhook_events = ['publish']",
            "webhook_events must be a list of room events: "
            "room.occupied, room.vacated, member.joined, member.left, message.published: "
            "'publish' is not one of them (got ['publish'])",
        ),
        ("webhook_events = ['user.connected']", "'user.connected' concerns no room"),
        ("webhook_events = [1]", "webhook_events must be a list of room events: room.occ"),
        ("max_subscribers = true", "max_subscribers must be an integer"),
    ],
)
def test_a_bad_table_names_file_table_and_key(tmp_path: Path, table: str, message: str) -> None:
    text = f'[[rooms]]\npattern = "a:*"\n[[rooms]]\npattern = "b:*"\n{table}\n'
    msg = error(tmp_path, text)
    assert msg.startswith(f"config file {tmp_path / 'hub.toml'}: [[rooms]] #2 (pattern 'b:*'): ")
    assert message in msg, msg


def test_bad_patterns_and_shapes(tmp_path: Path) -> None:
    assert "[[rooms]] #1: pattern must be a room glob" in error(tmp_path, "[[rooms]]\npresence=1")
    assert "got 'a b'" in error(tmp_path, '[[rooms]]\npattern = "a b"')
    assert "rooms must be [[rooms]] tables" in error(tmp_path, 'rooms = "chat:*"')


def test_a_secret_pasted_into_a_table_is_not_shown(tmp_path: Path) -> None:
    msg = error(tmp_path, f'[[rooms]]\npattern = "a:*"\napi_keys = "{API_KEY}"\n')
    assert "unknown key 'api_keys'" in msg and API_KEY not in msg


def test_rooms_are_file_only_and_may_sit_beside_a_hubbub_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HUB_ROOMS must be \\[\\[rooms\\]\\] tables"):
        Settings.load({"HUB_ROOMS": "chat:*"})
    s = load(tmp_path, '[hubbub]\nport = 9\n[[rooms]]\npattern = "x:*"\nrecover = false\n')
    assert s.port == 9 and s.rooms[0].get("recover") is False


def test_anonymous_rooms_admit_guests_only_there(tmp_path: Path) -> None:
    s = load(tmp_path, '[[rooms]]\npattern = "open:*"\nanonymous = true\n', {
        "HUB_JWT_SECRET": SECRET})  # fmt: skip
    assert s.anonymous  # guests may connect …
    rules = RoomRules(s)
    assert rules.get("open:1").anonymous and not rules.get("lobby").anonymous  # … only there


def test_a_larger_room_message_limit_raises_the_frame_limit(tmp_path: Path) -> None:
    s = load(tmp_path, '[[rooms]]\npattern = "big:*"\nmax_message_bytes = 1000000\n')
    assert s.largest_message_bytes == 1_000_000 and s.max_message_bytes == 65536


def test_explain_names_the_source_of_each_option(tmp_path: Path) -> None:
    s = load(tmp_path, EXAMPLE)
    rows = {k: (v, src) for k, v, src in RoomRules(s).explain("chat:1")}
    where = f"[[rooms]] #1 (pattern 'chat:*') in {tmp_path / 'hub.toml'}"
    assert rows["history_size"] == (1000, where)
    assert rows["history_ttl"] == (3600.0, "HUB_HISTORY_TTL")
    assert rows["max_subscribers"] == (0, "default")
    unset = " (HUB_WEBHOOK_URLS is unset: nothing is sent)"
    events = ["member.joined", "member.left", "message.published"]
    assert rows["webhook_events"] == (events, where + unset)
    rows = {k: (v, src) for k, v, src in RoomRules(s).explain("lobby")}
    default = ["room.occupied", "room.vacated", "member.joined", "member.left"]
    assert rows["webhook_events"] == (default, "HUB_WEBHOOK_EVENTS" + unset)


def test_room_webhook_events_are_the_room_scoped_part_of_the_catalogue() -> None:
    assert set(ROOM_WEBHOOK_EVENTS) == set(WEBHOOK_EVENTS) - {"user.connected",
                                                             "user.disconnected"}  # fmt: skip


def test_digest_follows_meaning_not_spelling(tmp_path: Path) -> None:
    def digest(tables: list[dict[str, Any]]) -> str:
        return RoomRules(Settings(rooms=parse_tables(tables, "x.toml"))).digest()

    a = digest([{"pattern": "a:*", "presence": "off", "history_size": 5}])
    assert a == digest([{"pattern": "a:*", "history_size": 5, "presence": False}])
    assert a != digest([{"pattern": "a:*", "history_size": 6, "presence": False}])
    hooks = digest([{"pattern": "a:*", "webhook_events": ["member.left", "room.vacated"]}])
    assert hooks == digest([{"pattern": "a:*", "webhook_events": "room.vacated,member.left"}])
    assert digest([{"pattern": "a:*"}, {"pattern": "b:*"}]) != digest(
        [{"pattern": "b:*"}, {"pattern": "a:*"}]
    )


def test_cluster_digest_majority_then_first_seen() -> None:
    assert cluster_digest([]) is None
    assert cluster_digest([("n1", "x", 5), ("n2", "y", 1), ("n3", "x", 9)]) == "x"
    assert cluster_digest([("n1", "x", 5), ("n2", "y", 1)]) == "y"


def test_cli_explain(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(EXAMPLE)
    cmd = [sys.executable, "-m", "hubbub", "rooms", "explain", "feed:news", "--config", str(path)]
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("room feed:news: [[rooms]] #2 (pattern 'feed:*')")
    assert "client_publish     false" in out.stdout
    out = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, timeout=30)
    doc = json.loads(out.stdout)
    assert doc["table"] == {"index": 2, "pattern": "feed:*"}
    assert doc["options"]["history_size"] == {"value": 50, "from": "HUB_HISTORY_SIZE"}
    path.write_text('[[rooms]]\npattern = "a:*"\nhistory_size = "lots"\n')
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "[[rooms]] #1 (pattern 'a:*'): history_size" in out.stderr


async def test_memory_broker_keeps_history_per_room() -> None:
    now = [1000.0]
    sizes = {"small": (2, 10.0), "brief": (100, 1.0)}
    broker = MemoryBroker(
        history_size=100, history_ttl=3600.0, clock=lambda: now[0],
        room_history=lambda room: sizes.get(room, (100, 3600.0)), longest_ttl=3600.0,
    )  # fmt: skip
    for room in ("small", "brief", "other"):
        for i in range(5):
            await broker.publish(room, b'{"n":%d}' % i)
    kept = {r: len((await broker.history(r)).publications) for r in ("small", "brief", "other")}
    assert kept == {"small": 2, "brief": 5, "other": 5}
    now[0] += 2.0
    kept = {r: len((await broker.history(r)).publications) for r in ("small", "brief", "other")}
    assert kept == {"small": 2, "brief": 0, "other": 5}


def test_the_worked_example_of_the_docs_loads(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    example = doc.split("## Worked example", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    example = example.replace("…at least 32 bytes…", SECRET).replace("…backend key…", API_KEY)
    rules = RoomRules(load(tmp_path, example))
    chat, feed, call = rules.get("chat:lobby"), rules.get("feed:prices"), rules.get("call:x")
    assert (chat.presence, chat.history_size, chat.publish_rate.rate) == (True, 1000, 5.0)
    assert (feed.client_publish, feed.presence, feed.join_leave) == (False, False, False)
    assert call.signal and rules.max_peers("call:x") == 8 and not call.recover
    assert not rules.is_call_room("lobby") and rules.get("lobby").history_size == 100
    assert chat.webhook_events == ("member.joined", "member.left")
    assert feed.webhook_events == ("message.published",) and call.webhook_events == ()
    assert rules.get("lobby").webhook_events == DEFAULT_WEBHOOK_EVENTS


def test_guests_let_in_by_tables_hold_only_those_rooms(tmp_path: Path) -> None:
    from hubbub.hub.auth import Authenticator
    from hubbub.signaling.turn import may_get_ice

    env = {"HUB_JWT_SECRET": SECRET}
    text = '[[rooms]]\npattern = "open:*"\nanonymous = true\n'
    guest = Authenticator(load(tmp_path, text + "signal = false\n", env)).guest()
    assert guest.can("subscribe", "open:1") and not guest.can("subscribe", "lobby")
    assert not guest.can("signal", "open:1") and not may_get_ice(guest)  # no TURN credentials
    guest = Authenticator(load(tmp_path, text + "signal = true\n", env)).guest()
    assert guest.can("signal", "open:1") and may_get_ice(guest)  # an open call room
    everyone = Authenticator(load(tmp_path, text, {**env, "HUB_ALLOW_ANONYMOUS": "1"})).guest()
    assert everyone.can("subscribe", "lobby")  # guests allowed globally: the default grants
