"""Envelope (PROTOCOL.md §1, §3 limits; docs/hardening.md "Input validation"): room and event names,
data encoding limits, frame parsing of hostile input, cursors, and the encode-once frame."""

from __future__ import annotations

import sys

import orjson
import pytest

from hubbub.hub.envelope import (
    MAX_DEPTH,
    Position,
    Publication,
    check_event,
    check_room,
    encode_data,
    frame_bytes,
    make_body,
    make_cursor,
    parse_cursor,
    parse_frame,
    parse_since,
    room_hash,
)
from hubbub.hub.errors import BadRequest, TooLarge

# ---- room names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "room",
    [
        "a",
        "lobby",
        "chat:1",
        "user:alice",
        "a.b",
        ".a",
        "a..",
        "A-Z_09:.-",
        "x" * 128,
        "-",
        ":",
        "_",
    ],
)
def test_valid_rooms(room: str) -> None:
    assert check_room(room) == room


@pytest.mark.parametrize(
    "room",
    [
        "",
        "x" * 129,
        ".",
        "..",
        "." * 128,
        "../etc",
        "../../x",
        "a/b",
        "a b",
        " a",
        "a\n",
        "a\x00",
        "\x00",
        "a\x7f",
        "a\tb",
        "a\r\nb",
        "chаt",  # Cyrillic а (U+0430)
        "ｌobby",  # fullwidth l
        "café",
        "room\u200b",  # zero-width space
        "a*",
        "a?",
        "a#b",
        "%2e%2e",
    ],
    ids=repr,
)
def test_invalid_rooms(room: str) -> None:
    with pytest.raises(BadRequest) as info:
        check_room(room)
    assert info.value.code == "bad_request" and info.value.status == 400


@pytest.mark.parametrize("room", [None, 1, 1.5, b"lobby", ["lobby"], {"room": "x"}, True])
def test_room_not_a_string(room: object) -> None:
    with pytest.raises(BadRequest):
        check_room(room)


def test_room_error_details_are_bounded() -> None:
    with pytest.raises(BadRequest) as info:
        check_room("x" * 10_000 + "/")
    assert len(str(info.value.details)) < 200


# ---- event names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event", [None, "typing", "chat.message", "a:b-c_d", "x" * 64, "hub", "hubx.y"]
)
def test_valid_events(event: str | None) -> None:
    assert check_event(event) == event


@pytest.mark.parametrize(
    "event",
    ["", "x" * 65, "hub.join", "hub.gap", "hub.", "a b", "a\x00", "é", "a/b", 5, ["x"], True],
    ids=repr,
)
def test_invalid_events(event: object) -> None:
    with pytest.raises(BadRequest):
        check_event(event)


# ---- data encoding -------------------------------------------------------------------------------


def test_encode_data_plain_values() -> None:
    for data in ({"text": "hi"}, [1, 2.5, None, True], "s", 0, None, {"é": "ü ✓"}):
        assert orjson.loads(encode_data(data, 1024)) == data


def test_encode_data_size_limit_is_exact() -> None:
    data = "x" * 98  # encodes to 100 bytes with the quotes
    assert len(encode_data(data, 100)) == 100
    with pytest.raises(TooLarge) as info:
        encode_data(data + "x", 100)
    err = info.value
    assert err.code == "too_large" and err.status == 413
    assert err.details == {"limit": 100, "size": 101}
    with pytest.raises(TooLarge):
        encode_data({"blob": "y" * 70_000}, 65536)


def _nested_list(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def _nested_dict(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def test_encode_data_nesting() -> None:
    assert encode_data(_nested_list(MAX_DEPTH), 10_000)
    assert encode_data(_nested_dict(MAX_DEPTH), 10_000)
    for deep in (_nested_list(MAX_DEPTH + 1), _nested_dict(MAX_DEPTH + 1), _nested_list(100_000)):
        with pytest.raises(BadRequest):
            encode_data(deep, 10**9)
    mixed: object = 1
    for i in range(MAX_DEPTH + 1):
        mixed = [mixed] if i % 2 else {"k": mixed}
    with pytest.raises(BadRequest):
        encode_data(mixed, 10**9)


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**30, -(10**40)])
def test_encode_data_integers_beyond_64_bits(number: int) -> None:
    with pytest.raises(BadRequest):
        encode_data({"n": number}, 10_000)


def test_encode_data_integer_limits_inside_64_bits() -> None:
    assert encode_data([2**64 - 1, -(2**63)], 100) == b"[18446744073709551615,-9223372036854775808]"


def test_encode_data_huge_python_int_is_bad_request_not_value_error() -> None:
    # CPython refuses int->str beyond 4300 digits with ValueError; it must never escape.
    old = sys.get_int_max_str_digits()
    try:
        huge = 10**100_000
        with pytest.raises(BadRequest):
            encode_data({"n": huge}, 10**9)
    finally:
        sys.set_int_max_str_digits(old)


@pytest.mark.parametrize("data", [{1: "x"}, {("a",): 1}, {"s": {1, 2}}, b"raw", object()], ids=repr)
def test_encode_data_not_json(data: object) -> None:
    with pytest.raises(BadRequest):
        encode_data(data, 10_000)


# ---- frame parsing of hostile input ------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "{",
        '{"type": "ping"',
        "[]",
        '[{"type":"ping"}]',
        "1",
        '"ping"',
        "null",
        "true",
        "{}",
        '{"id": 1}',
        '{"type": 1}',
        '{"type": null}',
        '{"type": ["ping"]}',
        '{"type": {"x": 1}}',
        "1" * 1_000_000,
        '{"type":"publish","data":' + "9" * 1_000_000 + "}",
        '{"type":"publish","data":1e999}',
        "[" * 100_000,
        '{"type":"publish","data":' + "[" * 100_000,
        '{"type":"x","d":' + "[" * 5000 + "]" * 5000 + "}",
        '{"type":"x","d":' + '{"a":' * 5000 + "1" + "}" * 5000 + "}",
        '{"type":"\\ud800"}',
        "\ud800",
        '{"type":"ping"} {"type":"ping"}',
        '{"type":"ping"}\x00',
        "\ufeff{}",
    ],
    ids=lambda t: repr(t[:40]) + f"..len{len(t)}",
)
def test_parse_frame_refuses_cleanly(text: str) -> None:
    with pytest.raises(BadRequest) as info:  # not RecursionError, ValueError, MemoryError …
        parse_frame(text)
    assert info.value.code == "bad_request"


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xfe", b'{"type":"\xc0\xaf"}', b'{"type":"ping","x":"\xed\xa0\x80"}', b"[" * 100_000],
    ids=repr,
)
def test_parse_frame_refuses_bad_bytes(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_frame(raw)


def test_parse_frame_good() -> None:
    assert parse_frame('{"type":"ping"}') == {"type": "ping"}
    frame = parse_frame(b'{"type":"publish","id":3,"room":"r","data":{"n":[1,2]},"extra":1}')
    assert frame["type"] == "publish" and frame["data"] == {"n": [1, 2]} and frame["extra"] == 1
    # Big numbers that JSON allows come back as floats, never as unbounded ints.
    assert isinstance(parse_frame('{"type":"x","n":' + "9" * 30 + "}")["n"], float)


def test_deep_but_parseable_frame_is_then_refused_by_encode_data() -> None:
    frame = parse_frame('{"type":"publish","data":' + "[" * 500 + "]" * 500 + "}")
    with pytest.raises(BadRequest):
        encode_data(frame["data"], 10**6)


# ---- cursors -------------------------------------------------------------------------------------


def test_cursor_round_trip_one_room() -> None:
    pos = {"lobby": Position("AbC12345", 42)}
    cursor = make_cursor(pos)
    assert parse_cursor(cursor, ["lobby"]) == pos
    assert parse_since(cursor, ["lobby"]) == pos


def test_cursor_room_hash_is_cursor_safe() -> None:
    for i in range(2000):
        h = room_hash(f"room-{i}")
        assert len(h) == 8 and "." not in h and "~" not in h


def test_cursor_round_trip_32_long_rooms_fits_1024() -> None:
    rooms = [f"{i:02d}" + "r" * 126 for i in range(32)]
    assert all(len(r) == 128 for r in rooms)
    positions = {r: Position("Ep0ch" + f"{i:03d}", 10**9 + i) for i, r in enumerate(rooms)}
    cursor = make_cursor(positions)
    assert 1 <= len(cursor) <= 1024
    assert all(c.isalnum() or c in "_.~-" for c in cursor)
    assert parse_cursor(cursor, rooms) == positions
    # Only the rooms asked for come back; rooms the cursor does not mention are absent.
    assert parse_cursor(cursor, [*rooms[:3], "other"]) == {r: positions[r] for r in rooms[:3]}
    assert parse_cursor(cursor, ["other"]) == {}


def test_cursor_worst_case_fits_1024() -> None:
    """32 rooms, broker epochs (8 characters) and 13-digit offsets still fit in 1024."""
    from hubbub.hub.brokers.memory import new_epoch

    rooms = [f"{i:02d}" + "z" * 126 for i in range(32)]
    positions = {r: Position(new_epoch(), 10**13 - 1) for r in rooms}
    cursor = make_cursor(positions)
    assert len(cursor) <= 1024
    assert parse_cursor(cursor, rooms) == positions


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "x" * 1025,
        "abc",
        "a.b",
        "a.b.c.d",
        "hhhhhhhh.ep.x",
        "hhhhhhhh.ep.-1",
        "hhhhhhhh.ep.1.5",
        "hhhhhhhh.e-p.1",
        "hhhhhhhh..1",
        "hhhhhhhh." + "e" * 17 + ".1",
        "hhhhhhhh.ep." + "9" * 19,
        "hhhhhhhh.ep.1~",
        "~",
        "hhhhhhhh.ep.1\r\nX-Injected: 1",
        "hhhhhhhh.ep.1 ",
        "hhhhhhhh.ep.١",  # Arabic-Indic digit: isdigit() but not ASCII
        "hhhhhhhh.ép.1",
        "hhhhhhhh.ep.1/",
    ],
    ids=repr,
)
def test_malformed_cursors(cursor: str) -> None:
    with pytest.raises(BadRequest):
        parse_cursor(cursor, ["lobby"])


def test_parse_since_forms() -> None:
    rooms = ["a", "b"]
    assert parse_since({"epoch": "E1", "offset": 3}, rooms) == {
        "a": Position("E1", 3),
        "b": Position("E1", 3),
    }
    assert parse_since({"offset": 0}, ["a"]) == {"a": Position(None, 0)}
    assert parse_since(7, ["a"]) == {"a": Position(None, 7)}
    assert parse_since("7", ["a"]) == {"a": Position(None, 7)}
    cursor = make_cursor({"a": Position("E2", 9)})
    assert parse_since(cursor, rooms) == {"a": Position("E2", 9)}


@pytest.mark.parametrize(
    "since",
    [
        {"epoch": "E", "offset": -1},
        {"epoch": "E", "offset": "3"},
        {"epoch": "E", "offset": True},
        {"epoch": "E", "offset": 1.5},
        {"epoch": "E"},
        {"epoch": 5, "offset": 1},
        {"epoch": "E" * 65, "offset": 1},
        -1,
        True,
        1.5,
        ["a"],
        "",
        "not a cursor!",
        "9" * 19,
        "²",  # str.isdigit() is true, int() raises ValueError: must be BadRequest (regression)
        "١٢",  # Arabic-Indic digits: not an ASCII offset
    ],
    ids=repr,
)
def test_parse_since_bad(since: object) -> None:
    with pytest.raises(BadRequest):
        parse_since(since, ["a"])


# ---- publications and the encode-once frame ----------------------------------------------------


def test_publication_frame_splices_position() -> None:
    data = encode_data({"text": 'hé "quoted" </script>', "n": [1, {"x": None}]}, 1000)
    body = make_body(
        "chat:1", data, event="chat.msg", sender={"user": "alice", "session": "S1"}, ts=1234
    )
    pub = Publication("chat:1", 17, "EpOch123", body)
    expected = {
        "type": "message",
        "offset": 17,
        "epoch": "EpOch123",
        "room": "chat:1",
        "event": "chat.msg",
        "from": {"user": "alice", "session": "S1"},
        "ts": 1234,
        "data": {"text": 'hé "quoted" </script>', "n": [1, {"x": None}]},
    }
    assert orjson.loads(pub.frame) == expected
    # What the WebSocket writes (Publication.text) is exactly these bytes, built once.
    assert pub.text == pub.frame.decode()
    assert pub.frame is pub.frame and pub.text is pub.text
    assert pub.frame.startswith(b'{"type":"message","offset":17,"epoch":"EpOch123","room":')
    assert pub.kind == "message" and pub.event == "chat.msg"
    assert pub.decoded() == expected


def test_publication_frame_minimal_and_ephemeral() -> None:
    body = make_body("r", b"null", ts=1)
    stored = Publication("r", 1, "E", body)
    assert orjson.loads(stored.frame) == {
        "type": "message", "offset": 1, "epoch": "E", "room": "r", "ts": 1, "data": None,
    }  # fmt: skip
    assert stored.event is None
    ephemeral = Publication("r", None, None, body)
    assert ephemeral.frame == body
    assert orjson.loads(ephemeral.text) == {"type": "message", "room": "r", "ts": 1, "data": None}
    assert "offset" not in orjson.loads(ephemeral.frame)


def test_make_body_stamps_ts() -> None:
    body = orjson.loads(make_body("r", b"1"))
    assert isinstance(body["ts"], int) and body["ts"] > 1_600_000_000_000


def test_publication_kinds() -> None:
    join = Publication("r", None, None, frame_bytes({"type": "join", "room": "r", "user": "u"}))
    leave = Publication("r", None, None, frame_bytes({"type": "leave", "room": "r"}))
    other = Publication("r", None, None, frame_bytes({"type": "gap", "room": "r"}))
    assert (join.kind, leave.kind, other.kind) == ("join", "leave", "other")
